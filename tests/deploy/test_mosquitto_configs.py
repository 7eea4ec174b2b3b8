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
# mosquitto started as root drops to user "mosquitto", which cannot read pytest's tmp dirs
RUN_AS = "\nuser root\n" if os.geteuid() == 0 else ""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(d: Path, clients: list[str]) -> None:
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

    def issue(cn: str, stem: str, server: bool) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
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
    make_pki(pki, ["bus-1", "bus-2", "busbell-backend"])
    port = free_port()
    text = (DEPLOY / "central.conf").read_text()
    text = text.replace("listener 8883", f"listener {port} 127.0.0.1")
    text = text.replace("/etc/mosquitto/tls/", f"{pki}/").replace(
        "/var/lib/mosquitto/", f"{tmp_path}/"
    )
    text = text.replace("/etc/mosquitto/busbell.acl", str(tmp_path / "busbell.acl"))
    shutil.copy(DEPLOY / "busbell.acl", tmp_path / "busbell.acl")
    conf = tmp_path / "central.conf"
    conf.write_text(text + RUN_AS)
    proc = start(conf, port, tmp_path / "central.log")
    try:
        yield port, pki
    finally:
        proc.kill()
        proc.wait()


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


async def test_central_acl_confines_each_bus_to_its_own_topics(central: tuple[int, Path]) -> None:
    port, pki = central
    t = Topics()
    async with MqttSession(
        tls(port, pki, "busbell-backend"), "backend-1", clean_start=True
    ) as backend:
        await backend.subscribe([t.everything()])
        async with MqttSession(tls(port, pki, "bus-1"), "bus-1", clean_start=True) as bus1:
            await bus1.subscribe([t.fares_ack("bus-1"), t.fares_ack("bus-2")])
            await bus1.publish(t.status("bus-1"), b'{"state":"online"}', qos=1)
            await bus1.publish(t.status("bus-2"), b'{"state":"forged"}', qos=1)
            await bus1.publish(t.fares("bus-2"), b'{"forged":true}', qos=1)
            got = await collect(backend, 3, 2.0)
            assert [(m.topic, json.loads(m.payload)) for m in got] == [
                (t.status("bus-1"), {"state": "online"})
            ]
            await backend.publish(t.fares_ack("bus-1"), b'{"upto_seq":5}', qos=1)
            await backend.publish(t.fares_ack("bus-2"), b'{"upto_seq":9}', qos=1)
            acks = await collect(bus1, 2, 2.0)
            assert [m.topic for m in acks] == [t.fares_ack("bus-1")]
    # a client without a certificate is refused
    from busbell import UplinkError

    with pytest.raises(UplinkError):
        async with MqttSession(
            MqttSettings(host="127.0.0.1", port=port, tls_ca=pki / "ca.pem"),
            "anon",
            clean_start=True,
        ):
            pass


async def test_bus_bridge_carries_own_topics_both_ways(
    central: tuple[int, Path], tmp_path: Path
) -> None:
    cport, pki = central
    bport = free_port()
    text = (DEPLOY / "bus.conf").read_text().replace("BUS_ID", "bus-1")
    text = text.replace("listener 1883 127.0.0.1", f"listener {bport} 127.0.0.1")
    text = text.replace("mqtt.example.net:8883", f"127.0.0.1:{cport}")
    text = text.replace("/etc/busbell/tls/ca.pem", str(pki / "ca.pem"))
    text = text.replace("/etc/busbell/tls/bus.pem", str(pki / "bus-1.pem"))
    text = text.replace("/etc/busbell/tls/bus.key", str(pki / "bus-1.key"))
    bus_dir = tmp_path / "bus"
    bus_dir.mkdir()
    text = text.replace("/var/lib/mosquitto/", f"{bus_dir}/")
    assert not re.search(r"/etc/|example\.net", text)
    conf = tmp_path / "bus.conf"
    conf.write_text(text + RUN_AS)
    proc = start(conf, bport, tmp_path / "bus.log")
    t = Topics()
    try:
        local = MqttSettings(host="127.0.0.1", port=bport)
        async with MqttSession(
            tls(cport, pki, "busbell-backend"), "backend-2", clean_start=True
        ) as backend:
            await backend.subscribe([t.fares("bus-1")])
            async with MqttSession(local, "edge-bus-1", clean_start=True) as edge:
                await edge.subscribe([t.fares_ack("bus-1")])
                got: list[MqttMessage] = []
                for _ in range(50):  # the bridge connects asynchronously
                    await edge.publish(t.fares("bus-1"), b'{"bus_id":"bus-1","events":[]}', qos=1)
                    got = await collect(backend, 1, 0.2)
                    if got:
                        break
                assert got
                assert got[0].topic == t.fares("bus-1")
                await backend.publish(t.fares_ack("bus-1"), b'{"upto_seq":1}', qos=1)
                acks = await collect(edge, 1, 5.0)
                assert acks
                assert json.loads(acks[0].payload) == {"upto_seq": 1}
    finally:
        proc.kill()
        proc.wait()
