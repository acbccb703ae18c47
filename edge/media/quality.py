"""An estimate of a call's quality as a listener would score it: the E-model's MOS.

What ``edge ctl status`` shows per call is ITU-T G.107's E-model worked from
two things the device measures, rather than a score of the audio itself
(which would need the speech that was sent):

* the **loss left after repair** — frames the decoder had to conceal because
  neither the frame nor a copy of it arrived in time (frames a later packet's
  copy or FEC restored do not count);
* the **one-way delay**: half the path's round trip, plus the jitter buffer's
  hold, plus a 20 ms frame and :data:`PROCESSING_MS` of encoding, decoding
  and device buffers.

R = 93.2 - Id - Ie,eff, with Id the delay impairment and Ie,eff the
equipment impairment under random loss (G.107 §7.4, BurstR = 1), and MOS from
R by G.107 Annex B. The scale is G.107's narrowband one, on which a perfect
call scores 4.41: a wideband call sounds better than its number says, but the
number falls as a listener's opinion would, with loss and delay. ``IE`` and
``BPL`` are G.113's kind of values for a modern codec with good concealment
(Opus at 24 kbit/s or more): no impairment of its own, and concealment that
hides isolated losses better than G.711's Appendix I (Bpl 25.1).
"""

IE = 0.0
"""The codec's own impairment with no loss."""
BPL = 20.0
"""How robust the codec's concealment is against random packet loss."""
PROCESSING_MS = 10.0
R_MAX = 93.2


def r_factor(loss: float, one_way_ms: float) -> float:
    """G.107's transmission rating for ``loss`` (a fraction, after repair) and the
    mouth-to-ear ``one_way_ms``."""
    loss_percent = min(max(loss, 0.0), 1.0) * 100
    delay = max(one_way_ms, 0.0)
    delay_impairment = 0.024 * delay + (0.11 * (delay - 177.3) if delay > 177.3 else 0.0)
    equipment = IE + (95 - IE) * loss_percent / (loss_percent + BPL)
    return R_MAX - delay_impairment - equipment


def mos(r: float) -> float:
    """G.107 Annex B: the mean opinion score an R factor stands for (1 to 4.5)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


def estimate_mos(loss: float, rtt_ms: float | None, buffer_ms: float) -> float:
    """The MOS of a call with ``loss`` left after repair, the path's round trip
    (unknown: counted as 0) and the jitter buffer's hold, rounded to 0.01."""
    one_way = (rtt_ms or 0.0) / 2 + buffer_ms + 20.0 + PROCESSING_MS
    return round(mos(r_factor(loss, one_way)), 2)
