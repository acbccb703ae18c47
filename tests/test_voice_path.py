"""Speech through the whole agent-to-agent path with loss on the network, scored.

Two real agents in the NAT lab (:func:`bench.voice.voice_path`: two public sites,
the login server and supernodes, each a real process), the caller's uplink
dropping 5 % of the frames at random both ways (:mod:`tests.impair`). The caller
plays six Harvard sentences spoken by espeak-ng from a WAV file, 3 s into the
call; the callee records the call to another, two calls one after the other, each
on a forwarder seeded anew; each recording, aligned by
cross-correlation, is scored with wide-band PESQ against what was said. The
call's status, as ``edge ctl status`` shows it, must tell the loss it saw and
how the audio coped with it.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from bench import voice
from tests.natlab import unavailable

UNAVAILABLE = unavailable()
pytestmark = [
    pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE)),
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None,
        reason="espeak-ng makes the speech: apt-get install espeak-ng",
    ),
]

FLOOR = 3.6
"""For the mean of the two calls, under the 3.8 target of 5 % loss. Measured on this
path, on a 2-core machine shared with other work, one call at a time: 3.53 to 4.28
over thirteen calls, mean 4.04; each frame concealed in speech costs 0.1-0.2, so the
calls whose losses fall where copies cannot mend them score lowest. Two calls halve
the spread of the mean's."""
CONDITION = voice.CONDITIONS[1]
CALLS = 2


def test_speech_across_five_percent_loss_scores_and_the_status_shows_the_loss() -> None:
    pytest.importorskip("pesq", reason="the pesq package scores the speech")
    assert CONDITION.loss == 0.05
    spoken = voice.speech()
    with voice.voice_path(spoken, prefix="edgevoicetest") as path:
        outcomes = [path.call(CONDITION, seed) for seed in voice.seeds(CONDITION)[:CALLS]]
    # The recordings: scored against the speech, after the 3 s lead-in.
    scores = [outcome.score for outcome in outcomes]
    assert sum(scores) / len(scores) >= FLOOR, outcomes
    for outcome in outcomes:
        _the_status_shows_the_loss(outcome.caller, outcome.callee)


def _the_status_shows_the_loss(caller: dict[str, Any], callee: dict[str, Any]) -> None:
    assert callee["path"] == "direct-udp", callee
    # The callee counts the frames the forwarder dropped (one draw per frame: 5 % of
    # about 900 frames is 45, and 25 or more than 70 are each under one in a thousand).
    assert 0.025 <= callee["loss"] <= 0.08, callee
    assert callee["lost"] >= 20, callee
    audio = callee["audio"]
    # Most lost frames are played from a copy a later packet carried; the rest are
    # concealed. Every lost frame is one or the other.
    assert audio["repaired"] > audio["concealed"], audio
    assert audio["repaired"] + audio["concealed"] >= 0.9 * callee["lost"], callee
    assert 1.0 <= audio["mos"] < 4.5, audio
    # The caller heard the loss reports and protects its frames with copies; the other
    # way loses as much.
    assert caller["audio"]["copies"] >= 1, caller
    assert caller["loss"] > 0.0, caller
