"""Identities and secrecy: the registry's CA, user certificates, signatures, TLS contexts."""
