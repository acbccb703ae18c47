"""Two real agents with board profiles on gpiozero MockFactory pins, a real login server
and supernode: the intercom's button rings the desk phone, whose ringing LED blinks;
lifting the handset answers; ``edge ctl door open`` on the phone pulses the intercom's
door-strike relay; putting the handset down ends both calls."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from edge.client.agent import Agent, _call_audio
from edge.client.call import CallState
from edge.client.config import AgentConfig
from edge.device import profile as board_profile
from edge.device.board import Board
from edge.device.events import LedPattern
from edge.media.pipeline import CallAudio
from edge.runtime.control import request
from edge.runtime.errors import ConfigFileError
from tests.test_agent import PASSWORD, TIMEOUT, Network, network, run_uv

HW = Path(__file__).parent.parent / "hw"
DOOR_OPEN_MS = 400
PULSE_SLACK = 0.5
"""Seconds the relay may stay on beyond its pulse on a busy machine."""
TIMER_GRAIN = 0.005
"""uvloop's timers count whole milliseconds of its own clock: a pulse measured with the
mock pin's clock may end a millisecond early."""
PHONE_HOOK = 17
DOOR_BUTTON = 17
DOOR_RELAY = 23
PHONE_RING_LED = 12


def _profile(tmp: Path, name: str, old: str, new: str) -> Path:
    text = (HW / f"{name}.toml").read_text()
    assert old in text
    path = tmp / f"{name}.toml"
    path.write_text(text.replace(old, new))
    return path


def _intercom_profile(tmp: Path, targets: str) -> Path:
    path = _profile(tmp, "intercom-pizero2w", "targets = []", f"targets = {targets}")
    path.write_text(
        path.read_text().replace("door_open_ms = 3000", f"door_open_ms = {DOOR_OPEN_MS}")
    )
    return path


async def _start(net: Network, config: AgentConfig, factory: MockFactory) -> Agent:
    agent = Agent(config, password=PASSWORD, pin_factory=factory)
    await agent.start()
    net.stack.push_async_callback(agent.stop)
    await asyncio.wait_for(agent.online.wait(), TIMEOUT)
    return agent


def _board(agent: Agent) -> Board:
    assert agent.board is not None
    return agent.board


async def _until(agent: Agent, condition: Callable[[], bool]) -> None:
    await asyncio.wait_for(_board(agent).wait_for(condition), TIMEOUT)


def _states(agent: Agent) -> list[CallState]:
    assert agent.calls is not None
    return [call.state for call in agent.calls.manager.calls.values()]


def _ringing(agent: Agent) -> Callable[[], bool]:
    return lambda: _board(agent).behaviour.ringing() is not None


async def _pin_toggles(pin: MockPWMPin) -> None:
    """Until the pin has been both lit and dark since it was cleared (a blink)."""
    while not ({s.state > 0 for s in pin.states} >= {True, False}):
        await asyncio.sleep(0.02)  # sampling a gpiozero blink thread's output


def test_the_intercom_rings_the_phone_which_answers_opens_the_door_and_hangs_up(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            phone_pins = MockFactory(pin_class=MockPWMPin)
            door_pins = MockFactory(pin_class=MockPWMPin)
            phone_config = replace(
                net.agent_config("alice", [home]),
                board_profile=HW / "desk-phone-pi4.toml",
            )
            door_config = replace(
                net.agent_config("frontdoor", [home]),
                board_profile=_intercom_profile(tmp_path, '["alice"]'),
            )
            phone = await _start(net, phone_config, phone_pins)
            door = await _start(net, door_config, door_pins)

            # A press held past hold_ms rings alice; the phone's ringing LED blinks.
            door_pins.pin(DOOR_BUTTON).drive_low()
            await _until(phone, lambda: _board(phone).behaviour.leds["ring"] is LedPattern.RINGING)
            ring_led = phone_pins.pin(PHONE_RING_LED)
            ring_led.clear_states()
            await asyncio.wait_for(_pin_toggles(ring_led), TIMEOUT)
            assert _board(door).behaviour.leds["status"] is LedPattern.CONNECTING
            door_pins.pin(DOOR_BUTTON).drive_high()

            # Off hook: the phone answers; both calls go active.
            phone_pins.pin(PHONE_HOOK).drive_low()
            await _until(phone, lambda: CallState.ACTIVE in _states(phone))
            await _until(door, lambda: _board(door).behaviour.leds["status"] is LedPattern.IN_CALL)
            assert _board(phone).behaviour.leds["in_call"] is LedPattern.IN_CALL
            assert phone_pins.pin(PHONE_RING_LED).state == 0

            # The door opens for the callee's command, for door_open_ms, then closes.
            relay = door_pins.pin(DOOR_RELAY)
            relay.clear_states()
            answer = await request(phone_config.control_socket, "door", {"op": "open"})
            assert answer["ok"], answer
            assert answer["result"]["to"] == "frontdoor"
            await _until(door, lambda: _board(door).gpio is not None and relay.state == 1)
            await _until(door, lambda: relay.state == 0)
            on = [i for i, s in enumerate(relay.states) if s.state == 1]
            assert len(on) == 1
            held = relay.states[on[0] + 1].timestamp
            assert DOOR_OPEN_MS / 1000 - TIMER_GRAIN <= held < DOOR_OPEN_MS / 1000 + PULSE_SLACK
            assert _board(door).behaviour.counters["door opened"] == 1

            # The other way round there is no door: the phone refuses and counts it.
            answer = await request(door_config.control_socket, "door", {"op": "open"})
            assert answer["ok"], answer
            await _until(phone, lambda: any(
                k.startswith("door commands refused") for k in _board(phone).behaviour.counters
            ))  # fmt: skip

            status = await request(phone_config.control_socket, "status", {})
            board = status["result"]["board"]
            assert board["profile"] == "desk-phone-pi4" and board["leds"]["in_call"] == "in-call"
            status = await request(door_config.control_socket, "status", {})
            assert status["result"]["board"]["relays"] == {"door": "off"}
            assert status["result"]["board"]["relay_pulses"] == 1

            # On hook: both calls end, the LEDs go dark.
            phone_pins.pin(PHONE_HOOK).drive_high()
            await _until(phone, lambda: CallState.ENDED in _states(phone) and
                         CallState.ACTIVE not in _states(phone))  # fmt: skip
            await _until(door, lambda: _board(door).behaviour.leds["status"] is LedPattern.OFF)
            assert CallState.ACTIVE not in _states(door)
            assert _board(phone).behaviour.leds["in_call"] is LedPattern.OFF

    run_uv(run())


def test_the_intercom_answers_only_allowed_callers_and_their_door_command(tmp_path: Path) -> None:
    async def run() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            door_config = replace(
                net.agent_config("frontdoor", [home]),
                board_profile=_intercom_profile(tmp_path, "[]"),
                auto_answer=frozenset({"alice"}),
            )
            door = await _start(net, door_config, MockFactory(pin_class=MockPWMPin))
            alice = await net.agent(net.agent_config("alice", [home]))
            mallory = await net.agent(net.agent_config("mallory", [home]))
            assert alice.calls is not None and mallory.calls is not None

            await mallory.call({"user": "frontdoor"})
            await _until(door, lambda: _board(door).behaviour.ringing() is not None)
            assert CallState.ACTIVE not in _states(door)  # not allowed: left ringing
            mallory.hangup({})
            await _until(door, lambda: not _board(door).behaviour.live())

            await alice.call({"user": "frontdoor"})
            await _until(door, lambda: any(
                c.peer == "alice" and c.state is CallState.ACTIVE
                for c in _board(door).behaviour.calls.values()
            ))  # fmt: skip
            relay = door.board.gpio.relays["door"] if door.board and door.board.gpio else None
            assert relay is not None and not relay.value
            alice.door({"op": "open"})
            await _until(door, lambda: _board(door).behaviour.counters["door opened"] == 1)

    run_uv(run())


def test_ringing_in_parallel_the_first_to_lift_the_handset_wins(tmp_path: Path) -> None:
    async def run() -> None:
        async with network(tmp_path) as net:
            home = await net.home()
            profile = _intercom_profile(tmp_path, '["alice", "bob"]')
            profile.write_text(
                profile.read_text().replace('ring = "sequence"', 'ring = "parallel"')
            )
            door_pins = MockFactory(pin_class=MockPWMPin)
            door_config = replace(net.agent_config("frontdoor", [home]), board_profile=profile)
            door = await _start(net, door_config, door_pins)
            phones, pins = {}, {}
            for user in ("alice", "bob"):
                pins[user] = MockFactory(pin_class=MockPWMPin)
                config = replace(
                    net.agent_config(user, [home]), board_profile=HW / "desk-phone-pi4.toml"
                )
                phones[user] = await _start(net, config, pins[user])

            door_pins.pin(DOOR_BUTTON).drive_low()
            for phone in phones.values():
                await _until(phone, _ringing(phone))
            door_pins.pin(DOOR_BUTTON).drive_high()
            pins["bob"].pin(PHONE_HOOK).drive_low()
            await _until(phones["bob"], lambda: CallState.ACTIVE in _states(phones["bob"]))
            # alice's phone stops ringing: the intercom hung her call up.
            await _until(phones["alice"], lambda: not _board(phones["alice"]).behaviour.live())
            assert _board(phones["alice"]).behaviour.leds["ring"] is LedPattern.OFF
            assert _board(door).behaviour.counters["rings answered"] == 1
            active = [c.peer for c in _board(door).behaviour.live()]
            assert active == ["bob"]

    run_uv(run())


def test_a_wrong_board_profile_stops_the_agent_before_it_starts(tmp_path: Path) -> None:
    bad = _profile(tmp_path, "desk-phone-pi4", "pin = 27", "pin = 18")

    async def run() -> None:
        async with network(tmp_path) as net:
            config = replace(net.agent_config("alice", [("127.0.0.1", 9)]), board_profile=bad)
            with pytest.raises(ConfigFileError, match=r"buttons\.call\.pin.*I2S"):
                Agent(config, password=PASSWORD)
            assert not config.control_socket.exists()

    run_uv(run())


def test_a_board_profile_names_the_sound_card_and_turns_echo_control_on(tmp_path: Path) -> None:
    """Where the agent's [audio] is left at its defaults, the board's sound card is used
    at the profile's rate, and a hands-free board (the intercom) cancels echo; what the
    agent's own configuration names wins."""
    intercom = board_profile.read(HW / "intercom-pizero2w.toml")
    phone = board_profile.read(HW / "desk-phone-pi4.toml")
    base = AgentConfig(
        user_id="door", device_id="front", login_address=("127.0.0.1", 1),
        server_key=bytes(32), issuer_key=bytes(32), bootstrap=(), state_dir=tmp_path,
    )  # fmt: skip
    assert (base.capture, base.playback, base.echo_cancel) == ("default", "default", False)
    opened = _opener(base, intercom)
    assert opened.args == (intercom.audio.capture, intercom.audio.playback)
    assert opened.keywords == {"echo_cancel": True, "rate": intercom.audio.rate}
    assert _opener(base, phone).keywords["echo_cancel"] is False  # a handset
    own = replace(base, capture="file:in.wav", playback="none")
    assert _opener(own, intercom).args == ("file:in.wav", "none")
    assert _opener(base).args == ("default", "default")


def _opener(config: AgentConfig, board: board_profile.Profile | None = None) -> partial[CallAudio]:
    made = _call_audio(config, board)
    assert isinstance(made, partial)
    return made
