"""``make demo``'s parts: seeded SQLite, simulator, one collector run, mock MOR pages + widget."""

from __future__ import annotations

import html
import re
import secrets
from pathlib import Path

from mor_plugin.simulator import AmiSimulator, run_in_thread
from widget import demo


def test_demo_pages_embed_the_signed_widget_with_collected_data(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'mor.sqlite'}"
    peers = demo.demo_peers(20)
    demo.seed_database(db_url, peers)
    sim = AmiSimulator(peers, version="18", username="demo", secret="pw")
    with run_in_thread(sim):
        conf = demo.write_mor_conf(tmp_path, db_url, sim.port, "demo", "pw")
        assert demo.run_collector(conf) == 0
    demo.seed_history(db_url)
    client = demo.demo_app(db_url, secrets.token_hex(8)).test_client()

    listing = client.get("/billing/devices/devices_all").get_data(as_text=True)
    assert "<th>Acc</th><th></th>" in listing
    bullets = re.findall(r'<img src="(/mor-status/devices/\d+/bullet\.svg\?[^"]+)"', listing)
    assert len(bullets) == 22  # 20 peers, the roamer, the never-registered device
    assert client.get(html.unescape(bullets[0])).status_code == 200
    assert client.get(html.unescape(bullets[0]).split("?")[0]).status_code == 403  # unsigned

    # both lists carry the legend, sized by embed.js
    for listing_url in ("/billing/devices/devices_all", "/billing/devices/show_devices/2"):
        legend = client.get(listing_url).get_data(as_text=True)
        frame = re.search(r'<iframe class="legend mor-regstatus" src="([^"]+)"', legend)
        assert frame and client.get(html.unescape(frame.group(1))).status_code == 200
        assert '<script src="/mor-status/embed.js" defer>' in legend
    assert client.get("/mor-status/embed.js").status_code == 200

    kinds = set()
    for device_id in range(1, 23):
        page = client.get(f"/billing/devices/device_edit/{device_id}").get_data(as_text=True)
        src = re.search(r'<iframe class="mor-regstatus" src="([^"]+)"', page)
        assert src and "Registration Status:" in page
        body = client.get(html.unescape(src.group(1))).get_data(as_text=True)
        kinds.add(re.search(r'class="status status-(\w+)"', body).group(1))  # type: ignore[union-attr]
        if device_id == 21:
            assert "although assigned to server 2" in body
    assert kinds == {"ok", "lagged", "unreachable", "unknown", "unmonitored", "none"}

    # the seeded past day: a red hour and a yellow spell in the strip, latency samples
    page = client.get("/billing/devices/device_edit/1").get_data(as_text=True)
    src = re.search(r'<iframe class="mor-regstatus" src="([^"]+)"', page)
    assert src
    body = client.get(html.unescape(src.group(1))).get_data(as_text=True)
    assert 'class="block block-unreachable"' in body and 'class="block block-lagged"' in body
    assert '<svg class="sparkline"' in body
    # the servers page opens inside MOR's page, under its top bar
    assert '<a href="/billing/registration_status/servers">Servers</a>' in page
    servers = client.get("/billing/registration_status/servers").get_data(as_text=True)
    assert 'class="topbar"' in servers
    frame = re.search(r'<iframe class="mor-regstatus" src="(/mor-status/servers\?[^"]+)"', servers)
    assert frame and client.get(html.unescape(frame.group(1))).status_code == 200
