"""Peer side: the mesh of links between room members and the flooding of room messages."""
