"""Cryptography: CKKS homomorphic encryption, sealing and PKI (the only home of key material)."""
