"""p2pchat: peer-to-peer chat with rooms, a registry for presence, flooding for delivery."""

__version__ = "0.1.0"
