"""Devices plugged in and out mid-call, in the app, on the real PulseAudio that .ci/start-audio runs.

Alice's app uses real devices; Bob's sends a 660 Hz tone. A new sink and a new microphone (a virtual source fed by
a sink of its own, into which an 880 Hz tone is played) appear in her call page and Settings within 2 s; she
switches to them mid-call and the sound goes where it should; unplugging each puts the call on the default, and
the window says which device it moved to."""

import asyncio

import numpy as np
from PySide6.QtCore import Qt

from client.core.tracks import dominant_hz
from client.ui.settings_dialog import SettingsDialog
from tests.components import playing, pulse_module, record, require_audio
from tests.support import running_server
from tests.ui.apps import make_app, shot, until

PLUGGED_IN_WITHIN = 2.0  # seconds from a device appearing or going to the lists showing it: the figure


async def hz_at(source: str) -> float:
    """The strongest frequency in a second of what PulseAudio source `source` records (the app runs meanwhile)."""
    samples = await asyncio.to_thread(record, source, 1.0)
    assert len(samples) and float(np.abs(samples).max()) > 0.05, f"{source} recorded silence"
    return dominant_hz(samples)


def keys(box) -> list[str]:
    return [box.itemData(i) for i in range(box.count())]


def choose(box, key: str) -> None:
    """Pick `key` in a device list as a person does: the item becomes current and is activated."""
    i = box.findData(key)
    assert i >= 0, f"{key} not in {keys(box)}"
    box.setCurrentIndex(i)
    box.activated.emit(i)


def test_devices_plugged_in_mid_call_are_listed_chosen_and_left_when_unplugged(qtbot, qloop, tmp_path):
    require_audio()

    async def scenario():
        async with running_server() as srv:
            alice = make_app(tmp_path, "alice", name="Alice", server=srv.url, tone=None)
            alice.settings.echo_cancellation = False  # a steady test tone is what noise suppression removes
            alice.profile.save(alice.settings)
            bob = make_app(tmp_path, "bob", name="Bob", server=srv.url, tone=660)
            await alice.start()
            await bob.start()
            try:
                aw, page = alice.window, alice.window.call_page
                await until(lambda: "bob" in aw.contacts.rows and "alice" in bob.window.contacts.rows, 10, "online")
                qtbot.mouseClick(aw.contacts.rows["bob"].audio, Qt.MouseButton.LeftButton)
                await until(lambda: bob.window.incoming.isVisible(), 5, "Bob's incoming panel")
                qtbot.mouseClick(bob.window.incoming.accept_audio, Qt.MouseButton.LeftButton)
                await until(lambda: ":" in page.status.text(), 10, "the call to be up")
                bob_hears = next(iter(bob.engine.sessions.values())).received
                assert page.spk_pick.currentData() == "callbox_null"
                assert page.spk_pick.currentText() == "Callbox-null-sink (default)"

                qtbot.mouseClick(aw.settings_button, Qt.MouseButton.LeftButton)
                dialog = aw.findChild(SettingsDialog)
                await until(lambda: dialog.isVisible(), 2, "the settings dialog")
                with (pulse_module("module-null-sink", sink_name="callbox_test_headset",
                                   sink_properties="device.description=Test-headset") as unplug_headset,
                      pulse_module("module-null-sink", sink_name="callbox_test_feed",
                                   sink_properties="device.description=Test-feed"),
                      pulse_module("module-virtual-source", source_name="callbox_test_mic",
                                   master="callbox_test_feed.monitor",
                                   source_properties="device.description=Test-mic") as unplug_mic,
                      playing("callbox_test_feed", 880)):
                    await until(lambda: all("callbox_test_headset" in keys(box) for box in (page.spk_pick,
                                                                                           dialog.speaker))
                                and all("callbox_test_mic" in keys(box) for box in (page.mic_pick, dialog.mic)),
                                PLUGGED_IN_WITHIN, "the new sink and source in the call page and in Settings")
                    assert dialog.mic.currentData() == "" and dialog.speaker.currentData() == ""  # kept
                    assert dialog.speaker.currentText() == "System default (Callbox-null-sink)"
                    shot(dialog, "settings_devices_plugged_in")
                    dialog.reject()

                    # Mid-call, her speaker goes to the headset: Bob's tone now plays there.
                    choose(page.spk_pick, "callbox_test_headset")
                    assert abs(await hz_at("callbox_test_headset.monitor") - 660) < 5
                    # And her microphone to the new one: Bob hears its 880 Hz instead of the loop-back 660.
                    choose(page.mic_pick, "callbox_test_mic")
                    await until(lambda: abs((bob_hears.dominant_hz() or 0) - 880) < 5, 10, "Bob to hear 880 Hz")

                    unplug_headset()
                    await until(lambda: aw.info.isVisible() and "Test-headset" in aw.info.text(), PLUGGED_IN_WITHIN,
                                "the window to say the speaker moved")
                    assert aw.info.text() == "Speaker Test-headset was unplugged; now using Callbox-null-sink"
                    assert "callbox_test_headset" not in keys(page.spk_pick)
                    assert page.spk_pick.currentData() == "callbox_null"
                    assert abs(await hz_at("callbox_null.monitor") - 660) < 5  # the call goes on, on the default
                    shot(aw, "device_unplugged_mid_call")

                    unplug_mic()
                    await until(lambda: "Test-mic" in aw.info.text(), PLUGGED_IN_WITHIN, "the microphone moved")
                    assert aw.info.text() == ("Microphone Test-mic was unplugged; now using Monitor of "
                                              "Callbox-null-sink")
                    await until(lambda: abs((bob_hears.dominant_hz() or 0) - 660) < 5, 10,
                                "Bob to hear the default microphone")
                frames = bob_hears.audio_frames
                await asyncio.sleep(0.5)
                assert bob_hears.audio_frames > frames + 10 and ":" in page.status.text()
            finally:
                await alice.shutdown()
                await bob.shutdown()

    qloop.run_until_complete(scenario())
