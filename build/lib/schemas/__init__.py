"""The lexicon documents of our XRPC methods, shipped as package data so an installed service
finds them (services/api/lexicon.py reads them from here)."""
