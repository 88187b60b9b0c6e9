"""Rendering nginx.conf: the seed's directives, refusal of bad values, and nginx -t on every profile."""

from __future__ import annotations

import re
import resource
import shutil
import subprocess

import pytest

from pollbench.errors import UserError
from pollbench.stack import nginx_config as nc

PORTS = [8000, 8001, 8002, 8003]


def render(settings, tmp_path, ports=PORTS):
    (tmp_path / "logs").mkdir(exist_ok=True)
    (tmp_path / "temp").mkdir(exist_ok=True)
    return nc.render(settings, nc.RenderPaths.for_prefix(tmp_path), 8080, ports)


def directives(text: str) -> list[str]:
    """The config's statements, comments dropped and whitespace folded."""
    body = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return [re.sub(r"\s+", " ", s).strip() for s in re.split(r"[;{}]", body) if s.strip()]


def test_seed_profile_renders_every_seed_directive(tmp_path):
    d = directives(render(nc.load_profile("seed"), tmp_path))
    for expected in [
        "upstream frontends", "server 127.0.0.1:8000", "server 127.0.0.1:8001",
        "server 127.0.0.1:8002", "server 127.0.0.1:8003", "worker_processes 1",
        "worker_connections 1024", "use epoll", "keepalive_timeout 65", "proxy_read_timeout 200",
        "sendfile on", "tcp_nopush on", "tcp_nodelay on", "gzip on", "gzip_min_length 1000",
        "gzip_proxied any",
        "gzip_types text/plain text/css text/xml application/x-javascript application/xml "
        "application/atom+xml text/javascript",
        "proxy_next_upstream error", "client_max_body_size 50M", "location ^~ /static/",
        "if ($query_string)", "expires max", "location = /favicon.ico",
        "rewrite (.*) /static/favicon.ico", "location = /robots.txt",
        "rewrite (.*) /static/robots.txt", "proxy_pass_header Server",
        "proxy_set_header Host $http_host", "proxy_redirect off",
        "proxy_set_header X-Real-IP $remote_addr", "proxy_set_header X-Scheme $scheme",
        "proxy_pass http://frontends", "listen 127.0.0.1:8080", "stub_status", "deny all",
    ]:
        assert expected in d, expected
    # the seed has no upstream keep-alive: nginx speaks HTTP/1.0 with Connection: close
    assert not any(s.startswith("keepalive ") for s in d)
    assert "proxy_http_version 1.1" not in d


def test_upstream_keepalive_brings_its_two_companions(tmp_path):
    d = directives(render(nc.load_profile("keepalive"), tmp_path))
    assert "keepalive 32" in d and "proxy_http_version 1.1" in d
    assert 'proxy_set_header Connection ""' in d


@pytest.mark.parametrize("knob,value,words", [
    ("worker_connections", "1; include /etc/passwd", "worker_connections"),
    ("worker_connections", 10, "out of range"),
    ("worker_connections", 1.5, "not allowed"),
    ("worker_processes", "all", "auto"),
    ("gzip", "on; evil", "true or false"),
    ("multi_accept", 1, "true or false"),
    ("use", "kqueue", "epoll, poll, select"),
    ("proxy_next_upstream", ["error", "timeout;"], "drawn from"),
    ("balance", "sticky", "key-hash"),
    ("backends", 0, "backends = 0 needs nchan = true"),
    ("backends", 65, "from 0 to 64"),
    ("nchan_subscriber_timeout", "30s; include x", "nchan_subscriber_timeout"),
    ("not_a_knob", 1, "unknown nginx knob"),
])
def test_bad_values_are_refused_naming_the_knob(knob, value, words):
    with pytest.raises(UserError) as e:
        nc.validate({knob: value})
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_nchan_serves_without_backends_and_its_knobs_need_it():
    with pytest.raises(UserError, match="nchan = true serves without backends"):
        nc.validate({"nchan": True})  # the seed's 4 backends
    with pytest.raises(UserError, match="nchan_message_buffer_length needs nchan = true"):
        nc.validate({"nchan_message_buffer_length": 10})
    assert nc.serves(nc.validate({"nchan": True, "backends": 0})) == "nchan"
    assert nc.serves(nc.load_profile("seed")) == "pollbench"


def test_rules_between_knobs():
    with pytest.raises(UserError, match="needs upstream_keepalive"):
        nc.validate({"upstream_keepalive_requests": 100})
    with pytest.raises(UserError, match="FD_SETSIZE"):
        nc.validate({"use": "select", "worker_connections": 4000})
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < 1_000_000:
        with pytest.raises(UserError, match="hard limit"):
            nc.validate({"worker_rlimit_nofile": hard + 1})


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(UserError) as e:
        nc.load_profile("nope")
    assert "seed" in str(e.value) and "longpoll" in str(e.value)


def test_unsafe_run_folder_path_is_refused(tmp_path):
    bad = tmp_path / "a;b"
    bad.mkdir()
    with pytest.raises(UserError, match="cannot go into nginx.conf"):
        nc.RenderPaths.for_prefix(bad)


@pytest.mark.parametrize("profile", nc.profile_names())
def test_every_shipped_profile_passes_nginx_t(profile, tmp_path):
    nginx = shutil.which("nginx")
    assert nginx, "nginx is required for the tests (.ci/run installs nginx-light)"
    settings = nc.load_profile(profile)
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(settings, tmp_path, list(range(8000, 8000 + settings["backends"]))))
    proc = subprocess.run([nginx, "-p", str(tmp_path), "-c", str(conf), "-t"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_profile_names_its_nginx_binary_and_children_inherit_it(tmp_path):
    from pollbench.stack.spec import StackSpec

    parent = tmp_path / "parent.toml"
    parent.write_text('extends = "seed"\nnginx_binary = "built"\n[nginx]\nuse = "poll"\n')
    child = tmp_path / "child.toml"
    child.write_text(f'extends = "{parent}"\n[nginx]\nworker_connections = 2048\n')
    assert nc.profile_nginx_binary(str(child)) == "built"
    assert StackSpec(profile=str(child)).nginx_name() == "built"
    assert StackSpec(profile=str(child), nginx_binary="/usr/sbin/nginx").nginx_name() == \
        "/usr/sbin/nginx"  # --nginx wins over the profile
    assert StackSpec(profile="seed").nginx_name() == "nginx"
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "seed"\nnginx_bin = "x"\n')
    with pytest.raises(UserError, match="unknown key.*nginx_bin"):
        nc.load_profile(str(bad))


def test_bind_address_goes_into_listen_and_the_status_page_allow_list(tmp_path):
    seed = nc.load_profile("seed")
    default = nc.render(seed, nc.RenderPaths.for_prefix(tmp_path), 8080, PORTS)
    assert "listen 127.0.0.1:8080" in default and "allow 10." not in default
    text = nc.render(seed, nc.RenderPaths.for_prefix(tmp_path), 8080, PORTS,
                     listen_address="10.1.2.3")
    assert "listen 10.1.2.3:8080" in text
    assert re.search(r"allow 10\.1\.2\.3;", text)  # the host's own sampler, through --bind
    assert "server 127.0.0.1:" in text  # the backends stay on loopback
    for bad in ("localhost", "10.1.2.3; include /etc/passwd", "::1", "300.1.1.1"):
        with pytest.raises(UserError, match="--bind"):
            nc.render(seed, nc.RenderPaths.for_prefix(tmp_path), 8080, PORTS,
                      listen_address=bad)
