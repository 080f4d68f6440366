"""User interfaces. They consume peer events and call peer commands; never sockets."""
