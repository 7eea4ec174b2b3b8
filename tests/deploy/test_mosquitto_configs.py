"""The shipped Mosquitto configs work: central TLS + per-bus ACL, and the bus bridge.

Real mosquitto processes with certificates made here; only paths, ports and the bus id
placeholder are substituted into the files from deploy/mosquitto/.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from busbell import Topics
from busbell._mqtt import MqttMessage, MqttSession, MqttSettings
from tests.conftest import free_port

pytestmark = pytest.mark.mosquitto

DEPLOY = Path(__file__).parents[2] / "deploy" / "mosquitto"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
# mosquitto started as root drops to user "mosquitto", which cannot read pytest's tmp dirs
RUN_AS = "\nuser root\n" if os.geteuid() == 0 else ""
STOP_UNIT = "stopunit+S1"  # the shipped block with STOP_ID = S1
OPS = "busbell+ops"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(d: Path, clients: list[str], revoked: tuple[str, ...] = ()) -> None:
    """A CA, a server certificate, one client certificate per CN, and a CRL that revokes
    the certificates of ``revoked``."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("busbell test CA"))
        .issuer_name(_name("busbell test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    serials: dict[str, int] = {}

    def issue(cn: str, stem: str, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        serials[stem] = x509.random_serial_number()
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(serials[stem])
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = b.sign(ca_key, hashes.SHA256())
        (d / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    issue("localhost", "server", server=True)
    for c in clients:
        issue(c, c, server=False)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=1))
    )
    for stem in revoked:
        crl = crl.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serials[stem])
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    signed_crl = crl.sign(ca_key, hashes.SHA256())
    (d / "crl.pem").write_bytes(signed_crl.public_bytes(serialization.Encoding.PEM))


def start(conf: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text() if log.exists() else "mosquitto failed")
        time.sleep(0.05)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki, ["bus-1", "bus-2", "bus-3", "busbell-backend", STOP_UNIT, OPS, "stopunit+S2"],
             revoked=("bus-3",))  # fmt: skip
    port = free_port()
    proc = start(central_conf(tmp_path, pki, port), port, tmp_path / "central.log")
    try:
        yield port, pki
    finally:
        proc.kill()
        proc.wait()


def central_conf(tmp_path: Path, pki: Path, port: int, **change: str) -> Path:
    """deploy/mosquitto/central.conf with this test's port, certificates, ACL and
    persistence directory, and ``change``'s lines (``{"old line": "new line"}``)."""
    text = (DEPLOY / "central.conf").read_text()
    text = text.replace("listener 8883", f"listener {port} 127.0.0.1")
    text = text.replace("/etc/mosquitto/tls/", f"{pki}/").replace(
        "/var/lib/mosquitto/", f"{tmp_path}/"
    )
    text = text.replace("/etc/mosquitto/busbell.acl", str(tmp_path / "busbell.acl"))
    for old, new in change.items():
        assert old in text, old
        text = text.replace(old, new)
    acl = (DEPLOY / "busbell.acl").read_text()
    (tmp_path / "busbell.acl").write_text(acl.replace("STOP_ID", "S1"))
    conf = tmp_path / "central.conf"
    conf.write_text(text + RUN_AS)
    return conf


def tls(port: int, pki: Path, who: str) -> MqttSettings:
    return MqttSettings(
        host="127.0.0.1",
        port=port,
        tls_ca=pki / "ca.pem",
        tls_cert=pki / f"{who}.pem",
        tls_key=pki / f"{who}.key",
    )


async def collect(s: MqttSession, n: int, timeout: float) -> list[MqttMessage]:
    out: list[MqttMessage] = []

    async def run() -> None:
        async for m in s.messages():
            out.append(m)
            if len(out) >= n:
                return

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        pass
    return out


async def gather(s: MqttSession, quiet_s: float = 0.6, timeout: float = 5.0) -> list[MqttMessage]:
    """Messages until none came for ``quiet_s`` (or ``timeout``)."""
    out: list[MqttMessage] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await collect(s, 1, quiet_s)
        if not got:
            break
        out.extend(got)
    return out


async def test_central_acl_confines_each_bus_to_its_own_topics(central: tuple[int, Path]) -> None:
    port, pki = central
    t = Topics()
    async with MqttSession(
        tls(port, pki, "busbell-backend"), "backend-1", clean_start=True
    ) as backend:
        await backend.subscribe([t.everything()])
        async with MqttSession(tls(port, pki, "bus-1"), "bus-1", clean_start=True) as bus1:
            await bus1.subscribe([t.fares_ack("bus-1"), t.fares_ack("bus-2"), t.denylist()])
            allowed = [
                t.status("bus-1"),
                t.fares("bus-1"),
                t.vehicle("bus-1", "gnss"),
                t.bus_request_status("bus-1", "r1"),
            ]
            forbidden = [
                t.status("bus-2"),
                t.fares("bus-2"),
                t.display("bus-2"),
                t.vehicle("bus-2", "gnss"),
                t.fares_ack("bus-1"),  # steering topics: only the backend writes them
                t.fares_resend("bus-1"),
                t.fleet_keys("bus-1"),
                t.denylist(),
                t.request_status("r1"),  # a rider's request status: only via the relay
                t.bus_request_status("bus-2", "r1"),  # speaking for another bus
                t.wait("R1", "S1", "r1"),
            ]
            for topic in allowed + forbidden:
                await bus1.publish(topic, json.dumps({"by": "bus-1"}), qos=1)
            # retained writes are refused the same way
            await bus1.publish(t.fares("bus-2"), b'{"forged":true}', qos=1, retain=True)
            got = await gather(backend)
            assert sorted(m.topic for m in got) == sorted(allowed)
            await backend.publish(t.fares_ack("bus-1"), b'{"upto_seq":5}', qos=1)
            await backend.publish(t.fares_ack("bus-2"), b'{"upto_seq":9}', qos=1)
            await backend.publish(t.denylist(), b'{"version":1}', qos=1)
            acks = await gather(bus1)
            assert sorted(m.topic for m in acks) == sorted([t.fares_ack("bus-1"), t.denylist()])
    # the backend's shared subscription is allowed
    async with MqttSession(tls(port, pki, "busbell-backend"), "backend-2", clean_start=True) as b2:
        await b2.subscribe([t.shared_fares()])
        async with MqttSession(tls(port, pki, "bus-2"), "bus-2", clean_start=True) as bus2:
            await bus2.publish(t.fares("bus-2"), b"{}", qos=1)
            assert [m.topic for m in await collect(b2, 1, 3.0)] == [t.fares("bus-2")]
    from busbell import UplinkError

    # a client without a certificate is refused
    with pytest.raises(UplinkError):
        async with MqttSession(
            MqttSettings(host="127.0.0.1", port=port, tls_ca=pki / "ca.pem"),
            "anon",
            clean_start=True,
        ):
            pass
    # a revoked certificate (in the CRL) is refused
    with pytest.raises(UplinkError):
        async with MqttSession(tls(port, pki, "bus-3"), "bus-3", clean_start=True):
            pass


USERS = ("edge", "driver", "vehicle", "ops")


@pytest.fixture
def bus_broker(central: tuple[int, Path], tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """The shipped bus.conf + bus.acl for bus-1, bridged to the central broker."""
    cport, pki = central
    bport = free_port()
    bus_dir = tmp_path / "bus"
    bus_dir.mkdir()
    passwords = {u: f"pw-{u}-{os.getpid()}" for u in USERS}
    passwd = bus_dir / "bus.passwd"
    for i, (user, pw) in enumerate(passwords.items()):
        args = [MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(passwd), user, pw]
        subprocess.run(args, check=True, capture_output=True)
    (bus_dir / "bus.acl").write_text((DEPLOY / "bus.acl").read_text().replace("BUS_ID", "bus-1"))
    text = (DEPLOY / "bus.conf").read_text().replace("BUS_ID", "bus-1")
    text = text.replace("listener 1883 127.0.0.1", f"listener {bport} 127.0.0.1")
    text = text.replace("mqtt.example.net:8883", f"127.0.0.1:{cport}")
    text = text.replace("/etc/busbell/tls/ca.pem", str(pki / "ca.pem"))
    text = text.replace("/etc/busbell/tls/bus.pem", str(pki / "bus-1.pem"))
    text = text.replace("/etc/busbell/tls/bus.key", str(pki / "bus-1.key"))
    text = text.replace("/etc/busbell/mosquitto/", f"{bus_dir}/")
    text = text.replace("/var/lib/mosquitto/", f"{bus_dir}/")
    assert not re.search(r"^[^#]*(/etc/|example\.net)", text, re.M)
    conf = tmp_path / "bus.conf"
    conf.write_text(text + RUN_AS)
    proc = start(conf, bport, tmp_path / "bus.log")
    try:
        yield bport, passwords
    finally:
        proc.kill()
        proc.wait()


def local(port: int, user: str | None = None, password: str | None = None) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=port, username=user, password=password)


async def test_bus_broker_requires_credentials(bus_broker: tuple[int, dict[str, str]]) -> None:
    from busbell import UplinkError

    port, pw = bus_broker
    for settings in (local(port), local(port, "edge", "wrong"), local(port, "nobody", "x")):
        with pytest.raises(UplinkError):
            async with MqttSession(settings, f"c-{uuid.uuid4().hex[:6]}", clean_start=True):
                pass
    async with MqttSession(local(port, "edge", pw["edge"]), "edge-ok", clean_start=True):
        pass


async def test_bus_broker_each_component_writes_only_its_own_topics(
    bus_broker: tuple[int, dict[str, str]],
) -> None:
    port, pw = bus_broker
    t = Topics()
    b = "bus-1"
    topics = [
        t.fares_ack(b),
        t.fares_resend(b),
        t.fleet_keys(b),
        t.denylist(),
        t.vehicle(b, "gnss"),
        t.vehicle(b, "doors"),
        t.vehicle(b, "trip"),
        t.driver_ack(b),
        t.display(b),
        t.status(b),
        t.occupancy(b),
        t.fares(b),
        t.request_status("r1"),
        t.wait("R1", "S1", "r1"),
    ]
    allowed = {
        "edge": {
            t.display(b),
            t.status(b),
            t.occupancy(b),
            t.fares(b),
            t.driver_ack(b),
            t.request_status("r1"),
        },
        "driver": {t.driver_ack(b)},
        "vehicle": {t.vehicle(b, "gnss"), t.vehicle(b, "doors"), t.vehicle(b, "trip")},
        "ops": set(),  # read-only
    }
    observer = local(port, "edge", pw["edge"])
    async with MqttSession(observer, "observer", clean_start=True) as obs:
        await obs.subscribe([f"{t.prefix}/buses/{b}/#", t.denylist(), f"{t.prefix}/requests/#",
                             f"{t.prefix}/routes/#"])  # fmt: skip
        for user in USERS:
            async with MqttSession(local(port, user, pw[user]), f"w-{user}", clean_start=True) as w:
                for topic in topics:
                    await w.publish(topic, json.dumps({"by": user}), qos=1)
            got = await gather(obs)
            seen = {m.topic for m in got if json.loads(m.payload).get("by") == user}
            assert seen == allowed[user], user
        # the edge cannot read what is not its bus's (another bus's topics are not even
        # on this broker), and the driver cannot read fares
        async with MqttSession(
            local(port, "driver", pw["driver"]), "driver-read", clean_start=True
        ) as d:
            await d.subscribe([t.fares(b), t.display(b)])
            async with MqttSession(observer, "edge-pub", clean_start=True) as e:
                await e.publish(t.fares(b), b'{"by":"edge"}', qos=1)
                await e.publish(t.display(b), b'{"by":"edge"}', qos=1)
            assert [m.topic for m in await gather(d)] == [t.display(b)]


async def test_bus_bridge_carries_own_topics_both_ways_and_scopes_request_status(
    central: tuple[int, Path], bus_broker: tuple[int, dict[str, str]]
) -> None:
    cport, pki = central
    bport, pw = bus_broker
    t = Topics()
    async with MqttSession(
        tls(cport, pki, "busbell-backend"), "backend-2", clean_start=True
    ) as backend:
        await backend.subscribe([t.fares("bus-1"), f"{t.prefix}/buses/+/requests/#",
                                 f"{t.prefix}/requests/#"])  # fmt: skip
        async with MqttSession(
            local(bport, "edge", pw["edge"]), "edge-bus-1", clean_start=True
        ) as edge:
            await edge.subscribe([t.fares_ack("bus-1"), t.request_status("r9"),
                                  t.request_status("r8")])  # fmt: skip
            got: list[MqttMessage] = []
            for _ in range(50):  # the bridge connects asynchronously
                await edge.publish(t.fares("bus-1"), b'{"bus_id":"bus-1","events":[]}', qos=1)
                got = await collect(backend, 1, 0.2)
                if got:
                    break
            assert got
            assert got[0].topic == t.fares("bus-1")
            await gather(backend, quiet_s=0.3)
            # fares/ack only comes in over the bridge (no local user may write it)
            await backend.publish(t.fares_ack("bus-1"), b'{"upto_seq":1}', qos=1)
            acks = await collect(edge, 1, 5.0)
            assert [json.loads(m.payload) for m in acks] == [{"upto_seq": 1}]
            # the edge's local request status leaves the bus under the bus's own topic
            status = {"request_id": "r9", "state": "seen", "bus_id": "bus-1", "t": 1.0}
            await edge.publish(t.request_status("r9"), json.dumps(status), qos=1)
            got = await gather(backend)
            assert [m.topic for m in got] == [t.bus_request_status("bus-1", "r9")]
            await gather(edge, quiet_s=0.3)  # its own local echo
            # a status the backend publishes reaches the bus, and is not sent back
            other = {"request_id": "r8", "state": "seen", "bus_id": "bus-2", "t": 2.0}
            await backend.publish(t.request_status("r8"), json.dumps(other), qos=1)
            assert [m.topic for m in await collect(edge, 1, 5.0)] == [t.request_status("r8")]
            echoes = await gather(backend)
            assert [m.topic for m in echoes] == [t.request_status("r8")]  # its own, no bounce


def _every_topic(t: Topics) -> list[str]:
    """One topic of every kind, for two buses, two stops and a request."""
    out = [t.denylist(), t.request_status("r1"), t.wait("R1", "S1", "r1"),
           t.wait("R2", "S1", "r2"), t.wait("R1", "S2", "r3")]  # fmt: skip
    # bus ids near the certificates' CNs: a pattern line must not open any of them
    for b in ("bus-1", "bus-2", "stopunit", "S1", "busbell", "ops"):
        out += [t.status(b), t.display(b), t.occupancy(b), t.fares(b), t.fares_ack(b),
                t.fares_resend(b), t.fleet_keys(b), t.driver_ack(b), t.vehicle(b, "gnss"),
                t.bus_request_status(b, "r1")]  # fmt: skip
    return out


async def test_central_stop_unit_writes_only_its_own_stops_waits(
    central: tuple[int, Path],
) -> None:
    port, pki = central
    t = Topics()
    async with MqttSession(tls(port, pki, "busbell-backend"), "backend-su", clean_start=True) as be:
        await be.subscribe([t.everything()])
        async with MqttSession(tls(port, pki, STOP_UNIT), "su-1", clean_start=True) as unit:
            await unit.subscribe([t.request_status("r1"), t.fares("bus-1"), t.denylist()])
            for topic in _every_topic(t):
                await unit.publish(topic, json.dumps({"by": STOP_UNIT}), qos=1)
            # a retained wait, then its clearing (an empty retained payload)
            await unit.publish(t.wait("R3", "S1", "r4"), b'{"by":"su"}', qos=1, retain=True)
            await unit.publish(t.wait("R3", "S1", "r4"), b"", qos=1, retain=True)
            got = await gather(be)
            assert sorted(m.topic for m in got) == sorted(
                [
                    t.wait("R1", "S1", "r1"),
                    t.wait("R2", "S1", "r2"),
                    *[t.wait("R3", "S1", "r4")] * 2,
                ]
            )
            # it reads request statuses (its lamp), not fares or the deny list
            await be.publish(t.request_status("r1"), b'{"state":"seen"}', qos=1)
            await be.publish(t.fares("bus-1"), b"{}", qos=1)
            await be.publish(t.denylist(), b"{}", qos=1)
            assert [m.topic for m in await gather(unit)] == [t.request_status("r1")]
    # another stop's unit may not write S1's waits
    async with MqttSession(
        tls(port, pki, "busbell-backend"), "backend-su2", clean_start=True
    ) as be:
        await be.subscribe([t.everything()])
        async with MqttSession(tls(port, pki, "stopunit+S2"), "su-2", clean_start=True) as other:
            await other.publish(t.wait("R1", "S1", "r9"), b"{}", qos=1)
            await other.publish(t.status("S2"), b"{}", qos=1)
        assert await gather(be) == []


async def test_central_ops_user_reads_everything_and_writes_nothing(
    central: tuple[int, Path],
) -> None:
    port, pki = central
    t = Topics()
    async with MqttSession(
        tls(port, pki, "busbell-backend"), "backend-ops", clean_start=True
    ) as be:
        await be.subscribe([t.everything()])
        async with MqttSession(tls(port, pki, OPS), "ops-1", clean_start=True) as ops:
            await ops.subscribe([t.everything()])
            for topic in _every_topic(t):
                await ops.publish(topic, json.dumps({"by": OPS}), qos=1)
                await ops.publish(topic, json.dumps({"by": OPS}), qos=1, retain=True)
            assert [m for m in await gather(be) if b'"by"' in m.payload] == []
            # and it sees what others publish
            async with MqttSession(tls(port, pki, "bus-1"), "bus-1-ops", clean_start=True) as bus:
                await bus.publish(t.status("bus-1"), b'{"state":"online"}', qos=1)
                await bus.publish(t.fares("bus-1"), b'{"events":[]}', qos=1)
            await be.publish(t.fares_ack("bus-1"), b'{"upto_seq":1}', qos=1)
            seen = [m.topic for m in await gather(ops) if b'"by"' not in m.payload]
            assert seen == [t.status("bus-1"), t.fares("bus-1"), t.fares_ack("bus-1")]


async def test_bus_broker_ops_user_reads_everything(
    bus_broker: tuple[int, dict[str, str]],
) -> None:
    port, pw = bus_broker
    t = Topics()
    b = "bus-1"
    async with MqttSession(local(port, "ops", pw["ops"]), "ops-read", clean_start=True) as ops:
        await ops.subscribe([f"{t.prefix}/#"])
        async with MqttSession(local(port, "edge", pw["edge"]), "edge-w", clean_start=True) as e:
            await e.publish(t.fares(b), b"{}", qos=1)
            await e.publish(t.status(b), b"{}", qos=1)
        async with MqttSession(
            local(port, "vehicle", pw["vehicle"]), "veh-w", clean_start=True
        ) as v:
            await v.publish(t.vehicle(b, "gnss"), b"{}", qos=1)
        got = [m.topic for m in await gather(ops)]
        assert got == [t.fares(b), t.status(b), t.vehicle(b, "gnss")]


async def _tail(argv: list[str], publish: MqttSettings, topic: str) -> str:
    """Run ``busbell tail --count 1`` with ``argv``; publish one message once it listens."""
    import io

    from busbell._tail import _run, parser

    out = io.StringIO()
    a = parser().parse_args([*argv, "--kind", "status", "--count", "1"])
    tail = asyncio.create_task(_run(a, out))
    async with MqttSession(publish, f"pub-{uuid.uuid4().hex[:6]}", clean_start=True) as p:
        async with asyncio.timeout(10):
            while not tail.done() and not out.getvalue():
                await p.publish(topic, b'{"state":"online","t":1}', qos=1)
                await asyncio.sleep(0.2)
            assert await tail == 0
    return out.getvalue()


async def test_tail_reads_the_bus_broker_as_the_ops_user(
    bus_broker: tuple[int, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, pw = bus_broker
    t = Topics()
    edge = local(port, "edge", pw["edge"])
    monkeypatch.setenv("BUSBELL_MQTT__PASSWORD", pw["ops"])
    line = await _tail(
        ["--broker", f"127.0.0.1:{port}", "--username", "ops"], edge, t.status("bus-1")
    )
    assert "bus-1" in line
    assert "online" in line
    monkeypatch.delenv("BUSBELL_MQTT__PASSWORD")
    (tmp_path / "pw").write_text(pw["ops"] + "\n")
    argv = [
        "--broker",
        f"127.0.0.1:{port}",
        "--username",
        "ops",
        "--password-file",
        str(tmp_path / "pw"),
    ]
    assert "online" in await _tail(argv, edge, t.status("bus-1"))


async def test_tail_reads_the_central_broker_with_the_ops_certificate(
    central: tuple[int, Path],
) -> None:
    port, pki = central
    t = Topics()
    argv = ["--broker", f"127.0.0.1:{port}", "--tls-ca", str(pki / "ca.pem")]
    argv += ["--tls-cert", str(pki / f"{OPS}.pem"), "--tls-key", str(pki / f"{OPS}.key")]
    line = await _tail(argv, tls(port, pki, "bus-1"), t.status("bus-1"))
    assert "bus-1" in line
    assert "online" in line


async def test_central_keeps_a_workers_queued_fares_across_a_kill(tmp_path: Path) -> None:
    """A central broker killed (SIGKILL, power cut) keeps what it saved last: the
    backend worker's persistent session with its subscription and the fares queued for
    it while it was away. Mosquitto saves at a clean stop and every
    ``autosave_interval``; central.conf sets it (its default, 1800 s, would revert half
    an hour). The test shortens the shipped 60 s to 1 s; without the line nothing is
    saved before the kill and the fare is gone from the broker (the bus's ack timeout
    would send it again)."""
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki, ["bus-1", "busbell-backend"])
    port = free_port()
    conf = central_conf(tmp_path, pki, port, **{"autosave_interval 60": "autosave_interval 1"})
    t = Topics()
    proc = start(conf, port, tmp_path / "central.log")
    try:
        async with MqttSession(tls(port, pki, "busbell-backend"), "backend-1") as backend:
            await backend.subscribe([t.fares("bus-1")])
        async with MqttSession(tls(port, pki, "bus-1"), "bus-1", clean_start=True) as bus:
            await bus.publish(t.fares("bus-1"), b'{"batch": 1}', qos=1)
        saved = tmp_path / "mosquitto.db"
        published = time.time()
        deadline = time.monotonic() + 10
        while not (saved.exists() and saved.stat().st_mtime > published):
            assert time.monotonic() < deadline, "no autosave within 10 s"
            await asyncio.sleep(0.1)
        proc.kill()
        proc.wait()
        proc = start(conf, port, tmp_path / "central.log")
        async with MqttSession(tls(port, pki, "busbell-backend"), "backend-1") as backend:
            got = await collect(backend, 1, 5.0)
    finally:
        proc.kill()
        proc.wait()
    assert [(m.topic, m.payload) for m in got] == [(t.fares("bus-1"), b'{"batch": 1}')]
