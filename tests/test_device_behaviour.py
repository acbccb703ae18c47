"""The desk phone's and the intercom's behaviour, sans-IO (events and a clock in, actions
out), and the gpiozero adapter on MockFactory pins: bouncing and stuck buttons, LED
patterns, the door strike's timed pulse."""

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from edge.client.call import CallState, EndReason
from edge.device.behaviour import ERROR_SHOWN, STUCK_AFTER, Behaviour
from edge.device.events import (
    Action,
    Answer,
    ButtonEdge,
    CallNotPlaced,
    CallPlaced,
    CallUpdate,
    DoorCommand,
    HangUp,
    LedPattern,
    PlaceCall,
    PulseRelay,
    SetLed,
    Unheard,
)
from edge.device.gpio import Gpio
from edge.device.intercom import Intercom
from edge.device.phone import DeskPhone
from edge.device.profile import IntercomSettings, PhoneSettings, Profile, read

HW = Path(__file__).parent.parent / "hw"
DESK = read(HW / "desk-phone-pi4.toml")
DOOR = read(HW / "intercom-pizero2w.toml")


def desk_phone(speed: tuple[str, ...] = ("bob", "carol", "", "")) -> DeskPhone:
    assert DESK.phone is not None
    return DeskPhone(replace(DESK, phone=replace(DESK.phone, speed_dial=speed)))


def intercom(**settings: object) -> Intercom:
    base = IntercomSettings(("alice", "bob"), ("carol",), "sequence", 10.0, 2.0)
    return Intercom(replace(DOOR, intercom=replace(base, **settings)))  # type: ignore[arg-type]


def until(behaviour: Behaviour, now: float) -> None:
    """Run the behaviour's timer up to ``now``, as the loop would."""
    while (at := behaviour.get_timer()) is not None and at <= now:
        behaviour.handle_timer(at)


def actions(behaviour: Behaviour) -> list[Action]:
    out = []
    while (action := behaviour.next_action()) is not None:
        out.append(action)
    return out


def led(behaviour: Behaviour, part: str) -> LedPattern:
    return behaviour.leds[part]


def calls_of(done: list[Action]) -> list[Action]:
    return [a for a in done if not isinstance(a, SetLed)]


def edge(behaviour: Behaviour, part: str, pressed: bool, at: float) -> None:
    behaviour.handle(ButtonEdge(part, pressed, at), at)
    until(behaviour, at)


def press(behaviour: Behaviour, part: str, at: float, held: float = 0.5) -> None:
    """A clean press of ``held`` seconds starting at ``at``, and the time up to its end."""
    edge(behaviour, part, True, at)
    until(behaviour, at + held)
    edge(behaviour, part, False, at + held)
    until(behaviour, at + held + 0.1)


def update(behaviour: Behaviour, call: str, peer: str, state: CallState, at: float,
           *, outgoing: bool = False, reason: EndReason | None = None) -> None:  # fmt: skip
    behaviour.handle(CallUpdate(call, peer, state, outgoing, reason), at)


# ---------------------------------------------------------------- the desk phone


def test_lifting_the_handset_answers_a_ringing_call_and_putting_it_down_hangs_up() -> None:
    phone = desk_phone()
    update(phone, "c1", "alice", CallState.RINGING, 1.0)
    assert led(phone, "ring") is LedPattern.RINGING
    assert SetLed("ring", LedPattern.RINGING) in actions(phone)
    edge(phone, "hook", True, 2.0)
    until(phone, 2.1)
    assert calls_of(actions(phone)) == [Answer("c1")]
    update(phone, "c1", "alice", CallState.CONNECTING, 2.2)
    assert led(phone, "ring") is LedPattern.CONNECTING
    update(phone, "c1", "alice", CallState.ACTIVE, 2.4)
    assert phone.leds == {"ring": LedPattern.OFF, "message": LedPattern.OFF,
                          "in_call": LedPattern.IN_CALL}  # fmt: skip
    actions(phone)
    edge(phone, "hook", False, 9.0)
    until(phone, 9.1)
    assert calls_of(actions(phone)) == [HangUp("c1")]


def test_lifting_the_handset_with_no_call_dials_the_first_speed_dial() -> None:
    phone = desk_phone()
    edge(phone, "hook", True, 1.0)
    until(phone, 1.1)
    assert calls_of(actions(phone)) == [PlaceCall("bob")]
    assert led(phone, "ring") is LedPattern.CONNECTING
    phone.handle(CallPlaced("bob", "c2"), 1.2)
    update(phone, "c2", "bob", CallState.INVITING, 1.2, outgoing=True)
    assert led(phone, "ring") is LedPattern.CONNECTING
    update(phone, "c2", "bob", CallState.ENDED, 5.0, outgoing=True, reason=EndReason.REJECTED)
    assert led(phone, "ring") is LedPattern.OFF


def test_speed_dials_call_their_buddies_and_the_call_button_redials() -> None:
    phone = desk_phone()
    press(phone, "speed_2", 1.0)
    assert calls_of(actions(phone)) == [PlaceCall("carol")]
    phone.handle(CallPlaced("carol", "c1"), 1.7)
    update(phone, "c1", "carol", CallState.ENDED, 2.0, outgoing=True, reason=EndReason.HANGUP)
    press(phone, "call", 3.0)
    assert calls_of(actions(phone)) == [PlaceCall("carol")]
    phone.handle(CallPlaced("carol", "c2"), 3.6)
    update(phone, "c2", "carol", CallState.INVITING, 3.6, outgoing=True)
    press(phone, "speed_1", 4.0)  # a call is under way: nothing dialled
    assert calls_of(actions(phone)) == []
    assert phone.counters["dials during a call"] == 1


def test_an_empty_speed_dial_or_a_failed_call_shows_the_error_pattern_for_a_while() -> None:
    phone = desk_phone()
    press(phone, "speed_3", 1.0)
    assert calls_of(actions(phone)) == []
    assert led(phone, "in_call") is LedPattern.ERROR
    until(phone, 1.6 + ERROR_SHOWN)
    assert led(phone, "in_call") is LedPattern.OFF
    press(phone, "speed_1", 10.0)
    phone.handle(CallNotPlaced("bob", "bob has no device online"), 10.6)
    assert led(phone, "in_call") is LedPattern.ERROR
    assert phone.counters["dials that failed"] == 1


def test_the_answer_button_answers_then_hangs_up() -> None:
    phone = desk_phone()
    update(phone, "c1", "alice", CallState.RINGING, 1.0)
    press(phone, "answer", 2.0)
    assert calls_of(actions(phone)) == [Answer("c1")]
    update(phone, "c1", "alice", CallState.ACTIVE, 2.5)
    press(phone, "answer", 3.0)
    assert calls_of(actions(phone)) == [HangUp("c1")]
    update(phone, "c1", "alice", CallState.ENDED, 3.6, reason=EndReason.HANGUP)
    press(phone, "answer", 4.0)
    assert calls_of(actions(phone)) == [] and phone.counters["answer with no call"] == 1


def test_the_message_waiting_led_is_lit_while_unheard_messages_exist() -> None:
    phone = desk_phone()
    phone.handle(Unheard(2), 1.0)
    assert led(phone, "message") is LedPattern.MESSAGE_WAITING
    phone.handle(Unheard(-5), 2.0)  # nonsense from below: taken as none
    assert led(phone, "message") is LedPattern.OFF and phone.unheard == 0


def test_a_bouncing_hook_switch_answers_once() -> None:
    phone = desk_phone()
    update(phone, "c1", "alice", CallState.RINGING, 1.0)
    actions(phone)
    for i, level in enumerate([True, False, True, False, True]):  # 5 ms apart
        phone.handle(ButtonEdge("hook", level, 2.0 + i * 0.005), 2.0 + i * 0.005)
    until(phone, 2.5)
    assert calls_of(actions(phone)) == [Answer("c1")]
    assert phone.buttons.counters["bounces"] == 2
    phone.handle(ButtonEdge("hook", True, 2.6), 2.6)  # the same level again: no edge
    assert phone.buttons.counters["repeated edges"] == 1


def test_a_stuck_speed_dial_dials_once_and_is_reported_until_released() -> None:
    phone = desk_phone()
    edge(phone, "speed_1", True, 1.0)
    until(phone, 1.0 + STUCK_AFTER + 1)
    assert calls_of(actions(phone)) == [PlaceCall("bob")]
    assert phone.buttons.stuck == ["speed_1"]
    assert phone.status()["stuck"] == ["speed_1"]
    edge(phone, "speed_1", False, 100.0)
    until(phone, 100.1)
    assert phone.buttons.stuck == [] and phone.buttons.counters["stuck buttons"] == 1


# ---------------------------------------------------------------- the intercom


def test_a_press_shorter_than_its_hold_time_is_a_phantom() -> None:
    door = intercom()
    press(door, "call", 1.0, held=0.1)  # hold_ms is 150
    assert calls_of(actions(door)) == []
    assert door.counters["phantom presses"] == 1
    press(door, "call", 2.0, held=0.2)
    assert calls_of(actions(door)) == [PlaceCall("alice")]


def test_in_sequence_each_target_rings_in_turn_until_one_answers() -> None:
    door = intercom()
    edge(door, "call", True, 1.0)
    until(door, 1.2)
    assert calls_of(actions(door)) == [PlaceCall("alice")]
    assert led(door, "status") is LedPattern.CONNECTING
    door.handle(CallPlaced("alice", "a1"), 1.3)
    edge(door, "call", False, 2.0)
    until(door, 11.0)
    assert calls_of(actions(door)) == []
    until(door, 11.3)  # alice rang ring_seconds unanswered
    assert calls_of(actions(door)) == [HangUp("a1"), PlaceCall("bob")]
    door.handle(CallPlaced("bob", "b1"), 11.4)
    update(door, "a1", "alice", CallState.ENDED, 11.4, outgoing=True, reason=EndReason.CANCELLED)
    update(door, "b1", "bob", CallState.CONNECTING, 12.0, outgoing=True)
    update(door, "b1", "bob", CallState.ACTIVE, 12.2, outgoing=True)
    assert calls_of(actions(door)) == []
    assert led(door, "status") is LedPattern.IN_CALL and door.counters["rings answered"] == 1
    update(door, "b1", "bob", CallState.ENDED, 30.0, outgoing=True, reason=EndReason.HANGUP)
    assert door.ring is None and led(door, "status") is LedPattern.OFF


def test_a_target_that_cannot_be_called_or_refuses_gives_way_and_then_nobody_is_left() -> None:
    door = intercom()
    press(door, "call", 1.0)
    assert calls_of(actions(door)) == [PlaceCall("alice")]
    door.handle(CallNotPlaced("alice", "alice has no device online"), 1.7)
    assert calls_of(actions(door)) == [PlaceCall("bob")]
    door.handle(CallPlaced("bob", "b1"), 1.8)
    update(door, "b1", "bob", CallState.ENDED, 3.0, outgoing=True, reason=EndReason.REJECTED)
    assert calls_of(actions(door)) == []
    assert door.ring is None and led(door, "status") is LedPattern.ERROR
    assert door.counters["rings nobody answered"] == 1


def test_in_parallel_the_first_to_answer_wins_and_the_others_stop_ringing() -> None:
    door = intercom(targets=("alice", "bob", "carol"), ring="parallel")
    press(door, "call", 1.0)
    assert calls_of(actions(door)) == [PlaceCall("alice"), PlaceCall("bob"), PlaceCall("carol")]
    door.handle(CallPlaced("alice", "a1"), 1.7)
    door.handle(CallPlaced("bob", "b1"), 1.7)
    update(door, "b1", "bob", CallState.CONNECTING, 3.0, outgoing=True)
    assert calls_of(actions(door)) == [HangUp("a1")]
    door.handle(CallPlaced("carol", "c1"), 3.1)  # placed late: hung up at once
    assert calls_of(actions(door)) == [HangUp("c1")]
    until(door, 60.0)  # the winner's ring has no deadline any more
    assert calls_of(actions(door)) == []


def test_in_parallel_nobody_answering_hangs_up_all_at_the_deadline() -> None:
    door = intercom(ring="parallel")
    press(door, "call", 1.0)
    door.handle(CallPlaced("alice", "a1"), 1.7)
    door.handle(CallPlaced("bob", "b1"), 1.7)
    actions(door)
    until(door, 11.3)
    assert calls_of(actions(door)) == [HangUp("a1"), HangUp("b1")]
    assert led(door, "status") is LedPattern.ERROR


def test_the_second_button_rings_its_own_targets_and_presses_while_busy_are_ignored() -> None:
    door = intercom()
    press(door, "button_2", 1.0)
    assert calls_of(actions(door)) == [PlaceCall("carol")]
    press(door, "call", 2.0)
    assert calls_of(actions(door)) == [] and door.counters["presses while busy"] == 1


def test_a_stuck_call_button_rings_once() -> None:
    door = intercom(targets=("alice",))
    edge(door, "call", True, 1.0)
    until(door, 1.0 + STUCK_AFTER + 5)
    done = calls_of(actions(door))
    assert done.count(PlaceCall("alice")) == 1
    assert door.buttons.stuck == ["call"]


def test_the_door_opens_only_for_the_peer_of_the_active_call_in_its_session() -> None:
    door = intercom()
    update(door, "c1", "alice", CallState.RINGING, 1.0)
    assert door.door(DoorCommand("alice", "c1", "open-door", True), 1.1) == "not in that call"
    update(door, "c1", "alice", CallState.ACTIVE, 2.0)
    actions(door)
    refusals = [
        DoorCommand("mallory", "c1", "open-door", True),
        DoorCommand("alice", "c1", "open-door", False),
        DoorCommand("alice", "ffff", "open-door", True),
        DoorCommand("alice", "c1", "2", True),
    ]
    reasons = [door.door(command, 3.0) for command in refusals]
    assert reasons == ["not from the peer of the call", "not from the peer of the call",
                       "not in that call", "unknown action '2'"]  # fmt: skip
    assert actions(door) == []
    assert door.door(DoorCommand("alice", "c1", "open-door", True), 4.0) is None
    assert actions(door) == [PulseRelay("door", 2.0)]
    refused = {k: v for k, v in door.counters.items() if k.startswith("door commands refused")}
    assert sum(refused.values()) == 5 and door.counters["door opened"] == 1
    update(door, "c1", "alice", CallState.ENDED, 5.0, reason=EndReason.HANGUP)
    assert door.door(DoorCommand("alice", "c1", "open-door", True), 6.0) == "not in that call"


def test_a_desk_phone_has_no_door_to_open() -> None:
    phone = desk_phone()
    update(phone, "c1", "alice", CallState.ACTIVE, 1.0)
    assert phone.door(DoorCommand("alice", "c1", "open-door", True), 2.0) is not None
    assert not any(isinstance(a, PulseRelay) for a in actions(phone))


def test_too_many_calls_seen_are_forgotten_oldest_ended_first() -> None:
    phone = desk_phone()
    for i in range(100):
        update(phone, f"c{i}", "x", CallState.ENDED, float(i), reason=EndReason.HANGUP)
    assert len(phone.calls) == 32 and "c99" in phone.calls


# ---------------------------------------------------------------- gpiozero on mock pins


def _factory() -> MockFactory:
    return MockFactory(pin_class=MockPWMPin)


def test_mock_pins_reach_the_loop_as_stamped_edges_and_outputs_follow() -> None:
    async def run() -> None:
        factory, loop = _factory(), asyncio.get_running_loop()
        edges: asyncio.Queue[ButtonEdge] = asyncio.Queue()
        gpio = Gpio(DOOR, loop, edges.put_nowait, pin_factory=factory)
        try:
            pin = factory.pin(DOOR.buttons["call"].pin)
            pin.drive_low()  # pull-up, active low: pressed
            await asyncio.to_thread(pin.drive_high)  # from another thread, as gpiozero's
            first, second = await edges.get(), await edges.get()
            assert (first.part, first.pressed, second.pressed) == ("call", True, False)
            assert first.at <= second.at <= loop.time()
            gpio.show("status", LedPattern.IN_CALL)
            assert factory.pin(DOOR.leds["status"].pin).state == 1
            gpio.show("status", LedPattern.OFF)
            assert factory.pin(DOOR.leds["status"].pin).state == 0
            relay = factory.pin(DOOR.relays["door"].pin)
            gpio.pulse("door", 0.05)
            assert relay.state == 1 and gpio.status()["relays"] == {"door": "on"}
            released = loop.create_future()
            loop.call_later(0.2, released.set_result, None)
            await released
            assert relay.state == 0 and gpio.pulses == 1
        finally:
            gpio.close()

    asyncio.run(run())


def test_blinking_patterns_toggle_the_pin() -> None:
    async def run() -> None:
        factory = _factory()
        gpio = Gpio(DESK, asyncio.get_running_loop(), lambda e: None, pin_factory=factory)
        pin = factory.pin(DESK.leds["message"].pin)
        try:
            gpio.show("message", LedPattern.ERROR)  # 0.1 s on, 0.1 s off
            seen: set[int] = set()
            deadline = asyncio.get_running_loop().time() + 2.0
            while len(seen) < 2 and asyncio.get_running_loop().time() < deadline:
                seen.add(pin.state)
                await asyncio.sleep(0.01)  # sampling a real blink, not synchronising
            assert seen == {0, 1}
        finally:
            gpio.close()

    asyncio.run(run())


@pytest.mark.parametrize("profile", [DESK, DOOR])
def test_a_profile_of_the_other_kind_is_refused(profile: Profile) -> None:
    from edge.device.errors import DeviceMisuse

    with pytest.raises(DeviceMisuse):
        (Intercom if profile is DESK else DeskPhone)(profile)
    assert isinstance(PhoneSettings(("",) * 4), PhoneSettings)
