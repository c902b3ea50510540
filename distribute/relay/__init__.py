"""The edge pull relay: serve a stream this node does not hold by pulling it, once, from
the node placement names (its upstream), into this node's own store.

- :mod:`.playlist` parses the upstream's playlists (pure);
- :mod:`.cursor` decides, from each playlist, what to fetch and feed next (pure);
- :mod:`.puller` pulls one rendition over HTTP and hands init, parts and segments on;
- :mod:`.manager` runs the relayed streams of a node: upstream choice, renditions on
  demand, idle stop and upstream failover.
"""
