"""Checking a composed config before anything is created; the names it chooses from; resolvers."""
