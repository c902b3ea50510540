"""Sans-I/O RTMP ingest core: handshake, chunk stream, AMF0, FLV and the server
session state machine. The asyncio adapter lives in :mod:`ingest.rtmp.server`."""
