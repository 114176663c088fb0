"""The fault harness of issue 12: scenarios that break the daemon's world and measure SPEC §4."""
