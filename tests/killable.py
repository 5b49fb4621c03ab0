"""A loss function shared by a test and the subprocess it kills: one function, so one identity in both.

``ATTRKIT_TEST_KILL_AT=N`` makes the N-th call SIGKILL its process; ``calls`` counts the calls.
"""

import os
import signal

import attrkit

calls = []


def loss(model, batch):
    calls.append(1)
    if len(calls) == int(os.environ.get("ATTRKIT_TEST_KILL_AT", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
    return attrkit.cross_entropy(model, batch)
