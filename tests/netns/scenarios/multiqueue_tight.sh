# shellcheck shell=bash
# Scenario "multiqueue_tight": scenario "multiqueue" (scenarios/multiqueue.sh, whose helpers it uses) with
# queues:2 and the per-peer send bound lowered to 64 counters (FERROGUARD_SEND_LEAD_LIMIT; the default is 4096):
# the lanes wait for each other often, so the waiting and releasing of runtime/send_room.rs run end to end. On
# top of multiqueue's checks (nothing lost or reordered within a flow, no replay drops), the server's lanes must
# have waited. About 15 s per pair.

scenario_multiqueue_tight() {
	unset FERROGUARD_NO_OFFLOAD
	export FERROGUARD_SEND_LEAD_LIMIT=64
	multiqueue_run 2
	unset FERROGUARD_SEND_LEAD_LIMIT
}
