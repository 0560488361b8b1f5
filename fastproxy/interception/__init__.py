"""Transparent interception: `fastproxy init`, the istio-iptables drop-in.

flags.py            the config (istio-iptables flags, FASTPROXY_* variables)
rules_iptables.py   pure: config -> iptables-restore input per family; save-output surgery
rules_nft.py        pure: config -> one `nft -f` script (table inet fastproxy)
policy_routing.py   pure: TPROXY ip rules/routes and the ::6 address, as `ip` commands
apply.py            the executor: backend detection, idempotent apply, cleanup, validation
cli.py              add_parser() / run() for the main CLI
"""
