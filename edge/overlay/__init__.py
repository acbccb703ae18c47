"""The supernode overlay: a Kademlia DHT that answers "where is user X?".

``ids`` (keys, node ids, XOR distance), ``messages`` (the four RPCs as
dataclasses), ``routing`` (k-buckets), ``lookup`` (the iterative lookup),
``store`` (validated, versioned records), ``node`` (one supernode's part) and
``sim`` (many nodes in one process on a simulated clock). All are sans-IO.
"""
