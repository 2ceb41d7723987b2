"""The local devices a call uses, shared through MediaRelay and opened and closed by reference count; and the
screen while it is shared, sent through every peer connection's share slot."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Hashable

from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from . import camera as cams
from .audio import DeviceMissing, Microphone, Speaker, open_or_report, pick
from .devices import Devices
from .devices import current as current_devices
from .screen import SHARE_MAX_SIDE, ShareSlot, Target, capture, share_problem
from .tracks import (
    AudioTrack,
    BlackSource,
    CameraSource,
    MicrophoneSource,
    PatternSource,
    SilenceSource,
    ToneSource,
    VideoTrack,
)

log = logging.getLogger("callbox.media")

# The size outgoing video goes out at, by how many peers it is encoded for: aiortc encodes once per peer
# connection, so a mesh of N pays N-1 encodes; smaller frames keep that within a core.
VIDEO_SIZES = {1: (640, 480), 2: (480, 360)}
SMALLEST_VIDEO = (320, 240)
NO_CAMERA = "no camera was found; video calls send a test pattern instead"


def video_size_for(peers: int) -> tuple[int, int]:
    """Width and height for outgoing video sent to `peers` peers at once: 640x480 for one, 480x360 for two,
    320x240 for three or more."""
    return VIDEO_SIZES.get(max(1, peers), SMALLEST_VIDEO)


class LocalMedia:
    """Microphone, speaker and camera for every call of one engine.

    Each call subscribes to one relay proxy per kind; the device opens with the first subscriber and closes
    when the last proxy ends (a sender stops its track when its call ends). A repaired peer connection
    subscribes again and reuses the open device. A device that is missing is reported in `problems` and
    replaced by silence or a test pattern, so calls still connect."""

    def __init__(self, *, tone_hz: float | None = None, pattern: bool = False, microphone=None, speaker=None,
                 camera: str | None = None, echo_cancellation: bool = True, playback: bool = True,
                 on_problem: Callable[[str, str | None], None] = lambda kind, why: None):
        self.tone_hz = tone_hz
        self.pattern = pattern
        self.microphone_id, self.speaker_id, self.camera_id = microphone, speaker, camera
        self.on_problem = on_problem
        self.playback = playback  # False: remote audio is counted and analysed but not played (tests, tones)
        self.problems: dict[str, str] = {}
        self.processor = None
        if tone_hz is None:  # a synthetic source has no echo to cancel
            from .aec import create_processor

            self.processor = create_processor(echo_cancellation)
        self.muted = False
        self.camera_on = True
        self.video_size = VIDEO_SIZES[1]
        self._relay = MediaRelay()
        self._audio: AudioTrack | None = None
        self._video: VideoTrack | None = None
        self._proxies: dict[str, set[MediaStreamTrack]] = {"audio": set(), "video": set()}
        self._speaker: Speaker | None = None
        self._speaker_users = 0
        self._screen: VideoTrack | None = None  # the shared screen, while it is shared
        self._share_clock: float | None = None  # when the first share began: every share's timestamps count from it
        self._camera_in_use: str | None = None  # the id of the camera the video track reads, if one
        self._slots: weakref.WeakSet[ShareSlot] = weakref.WeakSet()  # every live peer connection's

    # ------------------------------------------------------------ problems

    def _report(self, kind: str, why: str | None) -> None:
        if why is None:
            if self.problems.pop(kind, None) is not None:
                self.on_problem(kind, None)
        elif self.problems.get(kind) != why:
            self.problems[kind] = why
            log.warning("%s: %s", kind, why)
            self.on_problem(kind, why)

    def check_devices(self, devices: Devices | None = None) -> None:
        """Say which devices are missing (or found again), without opening anything, so a window can tell before a
        call; `devices` is a look just taken, else one is taken now."""
        if self.tone_hz is not None:
            return
        devices = devices or current_devices()
        for kind, found in (("microphone", devices.microphones), ("speaker", devices.speakers)):
            self._report(kind, None if found else devices.problem or f"no {kind} was found")
        if not devices.cameras:
            self._report("camera", NO_CAMERA)
        elif self.problems.get("camera") == NO_CAMERA:
            self._report("camera", None)

    # ------------------------------------------------------------ audio out

    def subscribe_audio(self) -> MediaStreamTrack:
        if self._audio is None:
            self._audio = AudioTrack(self._audio_source())
            self._audio.muted = self.muted
        return self._proxy("audio", self._audio)

    def _audio_source(self):
        if self.tone_hz is not None:
            return ToneSource(self.tone_hz)
        mic = Microphone(self.microphone_id, processor=self.processor)
        why = open_or_report(mic.start, "microphone")
        self._report("microphone", why)
        return SilenceSource() if why else MicrophoneSource(mic)

    @property
    def mic_level(self) -> float:
        return self._audio.source.level if self._audio is not None else 0.0

    def set_muted(self, muted: bool) -> None:
        self.muted = muted
        if self._audio is not None:
            self._audio.muted = muted

    def switch_microphone(self, device) -> None:
        self.microphone_id = device
        if self._audio is not None and self.tone_hz is None:
            self._audio.replace_source(self._audio_source())

    # ------------------------------------------------------------ video out

    def subscribe_video(self) -> MediaStreamTrack:
        if self._video is None:
            self._video = VideoTrack(self._video_source(), self.video_size)
        return self._proxy("video", self._video)

    def set_video_size(self, width: int, height: int) -> None:
        """The size every outgoing video frame has from now on, for every peer (they share one track): the
        test pattern draws at it, a larger camera frame is scaled down to fit it, black frames stay small."""
        self.video_size = (width, height)
        if self._video is not None:
            self._video.set_size(width, height)

    def _video_source(self):
        if not self.camera_on:
            return BlackSource()
        if self.pattern:
            return PatternSource()
        try:
            found = cams.list_cameras()
            if not found:
                raise DeviceMissing(NO_CAMERA)
            cam = next((c for c in found if c.id == self.camera_id), found[0])
            source = CameraSource(cams.open_camera(cam), cam.name)
        except DeviceMissing as exc:
            self._camera_in_use = None
            self._report("camera", str(exc))
            return PatternSource()
        self._camera_in_use = cam.id
        self._report("camera", None)
        return source

    def set_camera(self, on: bool) -> None:
        """Camera off releases the device and sends black frames in the same slot; no renegotiation."""
        self.camera_on = on
        if self._video is not None:
            self._video.replace_source(self._video_source())

    def switch_camera(self, camera_id: str) -> None:
        self.camera_id = camera_id
        if self._video is not None and self.camera_on:
            self._video.replace_source(self._video_source())

    # ------------------------------------------------------------ devices that come and go

    def follow(self, devices: Devices) -> list[tuple[str, str]]:
        """The devices changed: each open device that is not the one the settings ask for now (it was unplugged,
        the chosen one came back, a first one appeared, or the system default moved) is reopened on the right
        one. Returns (kind, sentence) for each move, for the user."""
        if self.tone_hz is not None:
            return []
        moves = []
        source = self._audio.source if self._audio is not None else None
        if source is not None and devices.microphones:
            mic = getattr(source, "mic", None)  # None: silence stands in for a missing microphone
            want = pick(list(devices.microphones), self.microphone_id, output=False, quiet=True)
            if want.key != (mic.key if mic else ""):
                self._audio.replace_source(self._audio_source())
                still = mic and devices.find("microphone", mic.key)
                moves.append(("microphone", _moved("Microphone", mic and mic.name, still, self._audio.source.name)))
        spk = self._speaker
        if spk is not None and self.playback and devices.speakers:
            want = pick(list(devices.speakers), self.speaker_id, output=True, quiet=True)
            if want.key != spk.key:
                self.switch_speaker(self.speaker_id)
                moves.append(("speaker", _moved("Speaker", spk.name, devices.find("speaker", spk.key),
                                                self._speaker.name)))
        if self._video is not None and self.camera_on and not self.pattern:
            names = {c.id: c.name for c in devices.cameras}
            want_cam = self.camera_id if self.camera_id in names else next(iter(names), None)
            if want_cam != self._camera_in_use:
                before = self._camera_in_use
                before_name = self._video.source.name if before else None
                self._video.replace_source(self._video_source())
                moves.append(("camera", _moved("Camera", before_name, before in names,
                                               names.get(self._camera_in_use, "a test pattern"))))
        for kind, text in moves:
            log.info("%s: %s", kind, text)
        return moves

    def in_use(self, kind: str) -> str | None:
        """The key of the microphone, speaker or camera open now, else the one chosen (None: the default)."""
        if kind == "microphone":
            mic = getattr(self._audio.source, "mic", None) if self._audio is not None else None
            return mic.key if mic else self.microphone_id
        if kind == "speaker":
            return self._speaker.key if self._speaker is not None and self._speaker.key else self.speaker_id
        return self._camera_in_use if self._video is not None and self._camera_in_use else self.camera_id

    # ------------------------------------------------------------ sharing

    def _proxy(self, kind: str, track: MediaStreamTrack) -> MediaStreamTrack:
        proxy = self._relay.subscribe(track, buffered=(kind == "audio"))
        self._proxies[kind].add(proxy)
        proxy.on("ended", lambda: self._release(kind, proxy))
        return proxy

    def _release(self, kind: str, proxy: MediaStreamTrack) -> None:
        users = self._proxies[kind]
        users.discard(proxy)
        if users:
            return
        track = self._audio if kind == "audio" else self._video
        if kind == "audio":
            self._audio = None
        else:
            self._video = None
        if track is not None:
            track.stop()  # closes the device; the relay's reader sees the end and stops
            log.info("%s device released", kind)

    # ------------------------------------------------------------ screen sharing

    @property
    def sharing(self) -> bool:
        return self._screen is not None

    def share_slot(self) -> ShareSlot:
        """A new peer connection's screen slot: it sends the share while there is one."""
        slot = ShareSlot()
        self._slots.add(slot)
        if self._screen is not None:
            slot.attach(self._relay.subscribe(self._screen, buffered=False))
        return slot

    def start_sharing(self, target: Target | None = None, *, source=None,
                      on_end: Callable[[str], None] = lambda why: None) -> str | None:
        """Share a screen or window (`target`; None: the primary screen), or `source` (anything with next_frame),
        in every call; why it cannot be, or None. `on_end(why)` is called if the capture ends by itself (the
        shared window closed)."""
        if self._screen is None:
            if source is None:
                why = share_problem()
                if why is not None:
                    return why
                source = capture(target, on_end)
            # A slot's encoder refuses a frame stamped before its first (libvpx: "pts is smaller than initial pts"),
            # and then its sender stops for good: a second share goes on from the first one's clock, not from 0.
            self._share_clock = self._share_clock or time.time()
            self._screen = VideoTrack(source, size=(SHARE_MAX_SIDE, SHARE_MAX_SIDE), clock_from=self._share_clock)
            for slot in list(self._slots):
                slot.attach(self._relay.subscribe(self._screen, buffered=False))
            log.info("screen shared")
        return None

    def stop_sharing(self) -> None:
        screen, self._screen = self._screen, None
        if screen is not None:
            for slot in list(self._slots):
                slot.attach(None)  # ends each subscription
            screen.stop()  # and the capture thread
            log.info("screen no longer shared")

    # ------------------------------------------------------------ speaker

    def acquire_speaker(self) -> Speaker | None:
        self._speaker_users += 1
        if self._speaker is None:
            spk = Speaker(self.speaker_id, processor=self.processor)
            if self.playback:
                self._report("speaker", open_or_report(spk.start, "speaker"))
            self._speaker = spk  # without a device it still feeds the echo canceller's reference
        return self._speaker

    def release_speaker(self) -> None:
        self._speaker_users = max(0, self._speaker_users - 1)
        if self._speaker_users == 0 and self._speaker is not None:
            self._speaker.stop()
            self._speaker = None

    def switch_speaker(self, device) -> None:
        self.speaker_id = device
        if self._speaker is not None:
            old = self._speaker
            spk = Speaker(device, processor=self.processor)
            why = open_or_report(spk.start, "speaker")
            self._report("speaker", why)
            self._speaker = spk
            old.stop()

    def play(self, frame, source: Hashable = None) -> None:
        """Remote audio from `source` (any hashable, one per remote stream: a PeerSession passes itself) to
        the speaker, which mixes the sources. Without playback this returns at once."""
        if self._speaker is not None:
            self._speaker.play(frame, source)

    def release_source(self, source: Hashable) -> None:
        """A remote stream ended: the speaker forgets its ring buffer and resampler."""
        if self._speaker is not None:
            self._speaker.release(source)

    # ------------------------------------------------------------ end

    def close(self) -> None:
        self.stop_sharing()
        for kind in ("audio", "video"):
            for proxy in list(self._proxies[kind]):
                proxy.stop()
        if self._speaker is not None:
            self._speaker.stop()
            self._speaker = None
        if self.processor is not None:
            self.processor.close()

    @property
    def open_devices(self) -> int:
        """How many local tracks or speakers are open now (leak checks read it)."""
        return (self._audio is not None) + (self._video is not None) + (self._speaker is not None)


def _moved(what: str, before: str | None, still_there, now: str) -> str:
    """The sentence for a device move: `before` is the device's name (None: there was none), `still_there` whether
    it is still plugged in."""
    if not before:
        return f"{what}: now using {now}"
    if not still_there:
        return f"{what} {before} was unplugged; now using {now}"
    return f"{what}: now using {now} instead of {before}"
