#!/bin/bash
# Scenario "traffic" (kernel #2): the kernel's tests() with IPv4 as the outer transport.

scenario_traffic() {
	topo_loopback
	endpoints_v4
	traffic_tests "traffic, v4 outer" full
}
