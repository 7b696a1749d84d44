# shellcheck shell=bash
# Scenario "multiqueue_plain": scenario "multiqueue" (scenarios/multiqueue.sh, whose helpers it uses) with
# queues:4 and FERROGUARD_NO_OFFLOAD=1: four TUN queues without the virtio-net header, one packet per read and
# write. About 30 s per pair.

scenario_multiqueue_plain() {
	export FERROGUARD_NO_OFFLOAD=1
	multiqueue_run 4
}
