"""Fault-injection tests: each one feeds attrkit a failure and checks the message."""
