"""A template attrkit plugin: copy this distribution to start your own."""
