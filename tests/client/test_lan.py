"""client.core.lan in one process: real embedded servers, real engines, real mDNS on loopback (see test_discovery).

The same behaviour across real processes, SIGKILL and namespaces is in tests/e2e/test_lan_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib

from client.core import events as ev
from client.core.engine import Engine, EngineConfig
from client.core.lan import Lan, server_id_at
from client.core.media import LocalMedia
from server import HubConfig, SignalingServer
from server.discovery import Advertiser, FoundServer, rank, server_facts
from shared import __version__
from tests.client.engines import Probe
from tests.components import require_multicast

LOOPBACK = ["127.0.0.1"]


@contextlib.asynccontextmanager
async def lan_apps(*users: str, configured: str = "", video: bool = False, find_timeout: float = 1.5):
    """One Lan and engine per user, started one after the other, each as the app starts them."""
    started: list[tuple[Lan, Probe]] = []
    try:
        for i, user in enumerate(users):
            lan = Lan(configured=configured, user_id=user, display_name=user.title(), port=0, host="127.0.0.1",
                      interfaces=LOOPBACK, find_timeout=find_timeout)
            probe_events: list = []
            lan.subscribe(probe_events.append)
            urls = await lan.choose()
            engine = Engine(EngineConfig(server=urls, user_id=user, display_name=user.title(), first_retry=0.1,
                                         max_retry=0.5, analyze_video=video),
                            LocalMedia(tone_hz=440 + 110 * i, pattern=video, playback=False))
            probe = Probe(engine, probe_events)
            engine.subscribe(probe.events.append)
            lan.attach(engine)
            await engine.start()
            started.append((lan, probe))
        yield started
    finally:
        for lan, probe in reversed(started):
            await probe.engine.stop()
            await lan.stop()


def server_id(probe: Probe) -> str | None:
    info = probe.engine.signaling.server_info
    return info.server_id if info is not None and probe.engine.connection.value == "online" else None


async def one_server(apps, timeout: float = 10.0) -> str:
    """Wait until every app is online on the same server and sees every other; return that server's id."""
    probes = [p for _, p in apps]
    users = {p.user for p in probes}

    def agreed():
        ids = {server_id(p) for p in probes}
        return len(ids) == 1 and None not in ids and all(
            users - {p.user} <= {u for u, i in p.engine.signaling.users.items() if i.status != "reconnecting"}
            for p in probes)

    await probes[0].until(agreed, timeout, "one server for everyone")
    return server_id(probes[0])


def test_rank_puts_dedicated_first_then_the_earliest_then_the_lowest_id():
    servers = [rank("embedded", 100.0, "b"), rank("dedicated", 300.0, "z"), rank("embedded", 100.0, "a"),
               rank("embedded", 50.0, "y"), rank(None, None, None), rank("dedicated", 200.0, "x")]
    assert sorted(servers) == [rank("dedicated", 200.0, "x"), rank("dedicated", 300.0, "z"),
                               rank("embedded", 50.0, "y"), rank("embedded", 100.0, "a"),
                               rank("embedded", 100.0, "b"), rank(None, None, None)]
    found = FoundServer(name="n", host="h", port=1, url="ws://h:1",
                        properties={"id": "abc", "kind": "dedicated", "started": "1500"})
    assert found.rank == rank("dedicated", 1.5, "abc")


async def test_server_id_at_names_the_server_that_answers_or_none(server):
    assert await server_id_at(server.url) == server.hub.config.server_id
    port = server.port
    await server.stop()
    assert await server_id_at(f"ws://127.0.0.1:{port}") is None


async def test_an_advertisement_that_outlived_its_server_is_passed_over():
    """A server SIGKILLed sends no goodbye: its record stays up to its TTL, while another may answer at its
    address. The app checks who answers before it moves, and stays."""
    require_multicast()
    async with lan_apps("ann") as apps:
        (lan, ann), = apps
        mine = lan.server.hub.config.server_id
        ghost = Advertiser()  # a dedicated server (it would win) that died; ann's server took its port
        facts = {"id": "0badc0ffee00", "kind": "dedicated", "started": "1000"}
        await ghost.start(lan.server.port, name="Ghost", version=__version__, facts=facts, interfaces=LOOPBACK)
        try:
            await ann.until(lambda: any(s.server_id == "0badc0ffee00" for s in lan.found), 5, "the ghost's record")
            await asyncio.sleep(1.5)
            assert lan.hosting and server_id(ann) == mine and lan.target.server_id == mine
            moved = [e for e in ann.events if isinstance(e, ev.Moving) or isinstance(e, ev.Hosting) and e.url is None]
            assert not moved
        finally:
            await ghost.stop()


async def test_two_hosts_merge_on_the_earlier_and_the_loser_hands_over():
    require_multicast()
    async with lan_apps("ann") as first, lan_apps("ben", find_timeout=0) as second:
        # ben looked for no time at all: a second island, as when two apps start at the same moment.
        (ann_lan, _), (ben_lan, ben) = first[0], second[0]
        assert ann_lan.target.how == ben_lan.target.how == "hosted"
        retired = ben_lan.server
        winner = await one_server([first[0], second[0]])
        assert winner == ann_lan.server.hub.config.server_id, "the server that started first wins"
        assert ben_lan.server is None and not ben_lan.hosting and ann_lan.hosting
        assert any(isinstance(e, ev.Hosting) and e.url is None and "handed over" in e.reason for e in ben.events)
        assert any(isinstance(e, ev.Moving) for e in ben.events)
        assert retired.hub.redirect is not None and retired.hub.redirect.server_id == winner
        await ben.until(lambda: retired not in ben_lan.retired, 5, "the empty retired server to stop")


async def test_when_the_host_quits_the_others_reconvene_on_one_server():
    require_multicast()
    async with lan_apps("ann", "ben", "cat") as apps:
        await one_server(apps)
        host_lan, host = apps[0]
        assert host_lan.hosting and all(lan.target.how == "discovered" for lan, _ in apps[1:])
        await host.engine.stop()
        await host_lan.stop()  # goodbye packets, then the server closes every connection with 1001
        survivors = apps[1:]
        new = await one_server(survivors, 12)
        hosts = [lan for lan, _ in survivors if lan.hosting]
        assert len(hosts) == 1 and hosts[0].server.hub.config.server_id == new
        assert hosts[0].user_id == "ben", "survivors host in the order of their ids"


async def test_a_call_goes_on_through_the_hosts_exit_and_is_restored_on_the_new_server():
    require_multicast()
    async with lan_apps("ann", "ben", "cat", video=True) as apps:
        await one_server(apps)
        (host_lan, host), (_, ben), (cat_lan, cat) = apps
        call_id = ben.engine.call("cat", video=True)
        await cat.until(lambda: call_id in cat.engine.sessions)
        cat.engine.accept(call_id, video=True)
        await ben.state(call_id, "active")
        received = ben.session(call_id).received
        await host.engine.stop()
        await host_lan.stop()
        frames = []
        async with asyncio.timeout(15):
            while True:
                frames.append(received.video_frames)
                await asyncio.sleep(0.25)
                new = {server_id(ben), server_id(cat)}
                if len(new) == 1 and None not in new:
                    srv = cat_lan.server or next(lan.server for lan, _ in apps if lan.server)
                    if srv.hub.status("ben") == srv.hub.status("cat") == "in_call":
                        break
        gaps = [b - a for a, b in zip(frames, frames[1:], strict=False)]
        assert all(g > 0 for g in gaps), f"video stalled during the move: frames every 0.25 s {frames}"
        assert ben.engine.sessions[call_id].call.live and cat.engine.sessions[call_id].call.live
        assert ben.ended(call_id) is None and cat.ended(call_id) is None


async def test_a_configured_server_is_never_left_nor_a_redirect_followed():
    require_multicast()
    mine = SignalingServer("127.0.0.1", 0, config=HubConfig(kind="embedded"))
    better = SignalingServer("127.0.0.1", 0, config=HubConfig(kind="dedicated"))
    await mine.start()
    await better.start()
    advertiser = Advertiser()
    await advertiser.start(better.port, name="Office", version=__version__, facts=server_facts(better.hub.config),
                           interfaces=LOOPBACK)
    try:
        url = mine.url
        async with lan_apps("ann", configured=url) as apps:
            (lan, ann), = apps
            assert lan.view is None, "a configured server needs no browsing"
            await ann.until(lambda: ann.engine.connection.value == "online", 5)
            mine.hand_over(f"ws://127.0.0.1:{better.port}", better.hub.config.server_id)
            await asyncio.sleep(2.5)  # more than a failover and a merge would take
            assert ann.engine.signaling.url == url and lan.target.how == "configured"
            assert server_id(ann) == mine.hub.config.server_id
            assert not any(isinstance(e, ev.Moving) for e in ann.events)
            await mine.stop()  # lost: it keeps trying the configured address, and nothing else
            await asyncio.sleep(3)
            assert ann.engine.signaling.url == url and ann.engine.connection.value != "online"
    finally:
        await advertiser.stop()
        await better.stop()
        await mine.stop()


async def test_a_discovered_client_follows_a_redirect_and_prefers_a_dedicated_server():
    require_multicast()
    async with lan_apps("ann", "ben") as apps:
        await one_server(apps)
        office = SignalingServer("127.0.0.1", 0, config=HubConfig(kind="dedicated"))
        await office.start()
        advertiser = Advertiser()
        await advertiser.start(office.port, name="Office", version=__version__,
                               facts=server_facts(office.hub.config), interfaces=LOOPBACK)
        try:
            assert await one_server(apps, 10) == office.hub.config.server_id
            assert not any(lan.hosting for lan, _ in apps), "the embedded host handed over to the dedicated one"
        finally:
            for _, p in apps:
                await p.engine.stop()
            await advertiser.stop()
            await office.stop()


async def test_survivors_take_turns_by_user_id_leaving_out_the_lost_host_and_the_already_lost():
    from shared import protocol as p

    lan = Lan(configured="", user_id="cat", display_name="Cat", discover=False)
    engine = Engine(EngineConfig(server="ws://127.0.0.1:9", user_id="cat", display_name="Cat"),
                    LocalMedia(tone_hz=440, playback=False))
    sig = engine.signaling
    sig.server_info = p.ServerInfo(version="x", ping_interval=1, resume_grace=1, host_user="ann")
    status = {"ann": "online", "aaron": "reconnecting", "ben": "in_call", "dan": "online"}
    sig.users = {u: p.UserInfo(user_id=u, display_name=u, status=st) for u, st in status.items()}
    lan.engine = engine
    assert lan._host_turn() == 1  # ben, then cat: ann hosted the server that was lost, aaron was gone already
    engine.media.close()


async def test_a_new_host_starts_with_the_keys_its_app_pinned_bound():
    """Bindings must not start afresh each time another app hosts: a server hosted here binds at once the
    contacts' keys this app pinned, so an impostor of a known contact is refused there too."""
    from client.core.identity import Identity
    from tests.server.test_identity import keyed

    alice, mallory = Identity.generate(), Identity.generate()
    lan = Lan(configured="", user_id="ben", display_name="Ben", port=0, host="127.0.0.1", discover=False,
              pins={"alice": alice.key})
    [url] = await lan.choose()
    try:
        impostor = await keyed(url, "alice", mallory)
        assert impostor.welcome["code"] == "key_mismatch"
        await impostor.close()
        real = await keyed(url, "alice", alice)
        assert real.welcome["type"] == "connection_established"
        await real.close()
    finally:
        await lan.stop()
