#!/bin/bash
# Run at every boot by edge-first-boot.service: an unprovisioned device (no
# /etc/edge/agent.toml) offers the provisioning console on its serial port; a
# provisioned one runs the agent. Checked at each boot, not only the first, so
# a factory reset (which removes the configuration) brings the console back.
#
# EDGE_ROOT (a directory standing for /), EDGE_SYSTEMCTL (the command run in
# place of systemctl) and EDGE_CONSOLE_TTY (ttyS0) let the tests run it.
set -euo pipefail

root="${EDGE_ROOT:-}"
systemctl="${EDGE_SYSTEMCTL:-systemctl}"
tty="${EDGE_CONSOLE_TTY:-ttyS0}"

# --no-block: this runs inside the boot transaction, and waiting here for a
# unit ordered after the network would stall the boot.
if [[ -e "$root/etc/edge/agent.toml" ]]; then
    echo "edge: provisioned; enabling edge-agent"
    "$systemctl" enable edge-agent.service
    "$systemctl" --no-block start edge-agent.service
else
    echo "edge: not provisioned; provisioning console on $tty"
    "$systemctl" --no-block start "edge-console@$tty.service"
fi
