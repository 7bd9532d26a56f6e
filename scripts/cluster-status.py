#!/usr/bin/env python3
"""The NATS cluster as `just status` shows it, from each node's own
monitoring endpoint: every node (name, reachable, the meta leader it sees),
then every stream and the KV bucket with the node that leads it, each
replica's lag and whether it is current, and each node's last sequence.

    scripts/cluster-status.py MONITOR_URL...   (e.g. http://127.0.0.1:8222)

Exit status 1 when a node does not answer or a stream has no leader: the
cluster needs attention.
"""
import json
import sys
import urllib.request

JSZ = "/jsz?acc=%24G&streams=true&config=true"


def fetch(url):
    with urllib.request.urlopen(url, timeout=3) as response:
        return json.load(response)


def shown(stream):
    """KV buckets are streams named KV_<bucket>."""
    return "KV " + stream[3:] if stream.startswith("KV_") else stream


def main(urls):
    nodes = []
    for url in urls:
        url = url.rstrip("/")
        try:
            varz = fetch(url + "/varz")
            jsz = fetch(url + JSZ)
            nodes.append({"url": url, "name": varz.get("server_name", "?"), "jsz": jsz})
        except Exception as e:  # any failure: the node is shown as unreachable
            nodes.append({"url": url, "name": None, "error": str(e)})

    healthy = True
    print("  %-8s %-28s %-12s %s" % ("NODE", "MONITOR", "STATE", "META LEADER"))
    for n in nodes:
        if n["name"] is None:
            healthy = False
            print("  %-8s %-28s %-12s %s" % ("?", n["url"], "unreachable", n["error"][:60]))
            continue
        meta = (n["jsz"].get("meta_cluster") or {}).get("leader") or "(none)"
        print("  %-8s %-28s %-12s %s" % (n["name"], n["url"], "up", meta))

    # Every stream each node hosts, with that node's view of it.
    views = {}
    for n in nodes:
        if n["name"] is None:
            continue
        for account in n["jsz"].get("account_details") or []:
            for s in account.get("stream_detail") or []:
                views.setdefault(s.get("name", "?"), {})[n["name"]] = s
    if not views:
        print("  no streams yet (the gateways and workers create them at start)")
        return 0 if healthy else 1

    print()
    print("  %-20s %-8s %s" % ("STREAM", "LEADER", "REPLICAS (lag in messages behind the leader)"))
    for name in sorted(views):
        by_node = views[name]
        leader = None
        for s in by_node.values():
            leader = leader or (s.get("cluster") or {}).get("leader")
        # The leader's own report carries its followers' lag.
        report = by_node.get(leader) or next(iter(by_node.values()))
        replicas = []
        for r in (report.get("cluster") or {}).get("replicas") or []:
            state = "current" if r.get("current") else "behind"
            if r.get("offline"):
                state = "offline"
            replicas.append("%s lag=%d %s" % (r.get("name", "?"), r.get("lag", 0), state))
        if not leader:
            healthy = False
        print("  %-20s %-8s %s" % (shown(name), leader or "(none)", ", ".join(replicas) or "-"))

    print()
    names = [n["name"] for n in nodes if n["name"] is not None]
    print("  %-20s %s" % ("LAST SEQ BY NODE", "  ".join("%10s" % n for n in names)))
    for name in sorted(views):
        row = []
        for node in names:
            s = views[name].get(node)
            row.append("%10s" % ((s.get("state") or {}).get("last_seq", 0) if s else "-"))
        print("  %-20s %s" % (shown(name), "  ".join(row)))
    return 0 if healthy else 1


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1:]))
