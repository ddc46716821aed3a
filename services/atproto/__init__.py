"""The AT Protocol as this service meets it: string syntax, keys and signatures, DID
resolution and service-auth token verification. Everything above (settings, the API, the
workers) imports from here; nothing here imports from them."""
