"""The server's options are the declared ones: its signature, its groups and the serve flags."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import RawPeer

from distkeras_async import cli, serve
from distkeras_async.options import (
    CheckpointOptions,
    Declared,
    RunOptions,
    ServerOptions,
    Timeouts,
    declared,
)
from distkeras_async.server.factory import make_server
from distkeras_async.server.limits import Capacity
from distkeras_async.server.parameter_server import ParameterServer
from distkeras_async.server.sharded import ShardedParameterServer
from distkeras_async.wire.auth import new_secret
from distkeras_async.wire.messages import Op

SECRET = new_secret()
WEIGHTS = [np.zeros((2, 3), np.float32), np.zeros(4, np.float32)]
SERVERS = [ParameterServer, ShardedParameterServer]
# The trainer records snapshots of the center itself: no server takes the option.
TRAINER_ONLY = {"snapshot_interval"}
SERVER_OPTIONS = [
    item
    for item in declared(Timeouts, CheckpointOptions, Capacity)
    if item.name not in TRAINER_ONLY
]
FLAGGED = [
    item
    for item in declared(RunOptions, ServerOptions, Timeouts, CheckpointOptions)
    if item.spec.flag
]


def _sample(item: Declared) -> tuple[str, Any]:
    """A valid command-line value for an option, and what it parses to."""
    if item.kind is int:
        return "3", 3
    if item.kind is float:
        return "2.5", 2.5
    return "somewhere.npz", "somewhere.npz"


def _serve_args(*extra: str) -> Any:
    return cli.build_parser().parse_args(["serve", "--model", "m.keras", "--workers", "2", *extra])


# --------------------------------------------------------------------------- the serve flags


def test_the_serve_command_has_flags_for_the_timeouts_and_checkpoints():
    flags = {item.spec.flag for item in FLAGGED}
    # What a standalone server must expose (the parameters of its make_server call).
    assert {
        "--workers",
        "--port",
        "--host",
        "--shards",
        "--round-timeout",
        "--idle-timeout",
        "--frame-timeout",
        "--handshake-timeout",
        "--send-timeout",
        "--checkpoint-path",
        "--checkpoint-every",
        "--checkpoint-interval",
    } <= flags


@pytest.mark.parametrize("item", FLAGGED, ids=lambda item: item.spec.flag)
def test_every_declared_flag_is_accepted_by_serve(item: Declared):
    text, value = _sample(item)
    args = _serve_args(item.spec.flag, text)
    assert getattr(args, item.name) == value


@pytest.mark.parametrize(
    "item", [i for i in FLAGGED if i.kind in (int, float)], ids=lambda item: item.spec.flag
)
def test_serve_refuses_what_the_declared_check_refuses(item: Declared, capsys):
    with pytest.raises(SystemExit):
        _serve_args(item.spec.flag, "-1")
    assert item.spec.flag in capsys.readouterr().err


def test_serve_keeps_its_own_defaults_and_the_declared_ones_elsewhere():
    args = _serve_args()
    assert (args.master_port, args.bind_host, args.shards) == (0, "127.0.0.1", 1)
    timeouts, checkpoints = serve.option_groups(args, Timeouts, CheckpointOptions)
    assert timeouts == Timeouts()
    assert checkpoints == CheckpointOptions()
    with pytest.raises(SystemExit):  # --workers has no default
        cli.build_parser().parse_args(["serve", "--model", "m.keras"])


def test_serve_builds_the_groups_from_its_flags(tmp_path):
    path = str(tmp_path / "c.npz")
    args = _serve_args("--idle-timeout", "7", "--send-timeout", "8", "--checkpoint-path", path)
    timeouts, checkpoints = serve.option_groups(args, Timeouts, CheckpointOptions)
    assert (timeouts.idle_timeout, timeouts.send_timeout) == (7.0, 8.0)
    # A path alone checkpoints every 60 s, as the trainers do.
    assert checkpoints == CheckpointOptions(checkpoint_path=path, checkpoint_interval=60.0)


def test_serve_help_lists_every_declared_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args(["serve", "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for item in FLAGGED:
        assert item.spec.flag in shown


# --------------------------------------------------------------------------- the signatures


@pytest.mark.parametrize("server", SERVERS, ids=lambda cls: cls.__name__)
def test_the_signature_lists_every_server_option_with_its_default(server: type):
    parameters = inspect.signature(server).parameters
    for item in SERVER_OPTIONS:
        assert item.name in parameters, item.name
        parameter = parameters[item.name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert parameter.default == item.default
    for name in ("timeouts", "checkpoints", "capacity"):
        assert parameters[name].default is None
    assert not TRAINER_ONLY & parameters.keys()
    assert list(parameters.values())[-1].kind is inspect.Parameter.VAR_KEYWORD


@pytest.mark.parametrize(
    "function",
    [ParameterServer.__init__, ShardedParameterServer.__init__, make_server],
    ids=["ParameterServer", "ShardedParameterServer", "make_server"],
)
def test_servers_take_fewer_than_16_named_parameters(function: Callable[..., Any]):
    # The code object counts what is really written, not the generated __signature__.
    code = function.__code__
    named = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    named = tuple(name for name in named if name != "self")
    assert len(named) < 16, named


# --------------------------------------------------------------------------- groups or flat


@pytest.mark.parametrize(
    ("group", "flat"),
    [
        ({"timeouts": Timeouts(round_timeout=2.0)}, {"round_timeout": 1.0}),
        ({"checkpoints": CheckpointOptions()}, {"checkpoint_every": 3}),
        ({"capacity": Capacity()}, {"max_connections": 4}),
    ],
    ids=["timeouts", "checkpoints", "capacity"],
)
@pytest.mark.parametrize("server", SERVERS, ids=lambda cls: cls.__name__)
def test_a_group_and_one_of_its_flat_options_are_refused_together(server, group, flat):
    shards = {"shards": 2} if server is ShardedParameterServer else {}
    with pytest.raises(TypeError, match=f"{next(iter(flat))}, not both"):
        server(WEIGHTS, "downpour", num_workers=1, secret=SECRET, **shards, **group, **flat)


def test_make_server_refuses_a_group_and_its_flat_option_too():
    with pytest.raises(TypeError, match="round_timeout, not both"):
        make_server(
            WEIGHTS,
            "downpour",
            shards=1,
            num_workers=1,
            secret=SECRET,
            timeouts=Timeouts(),
            round_timeout=1.0,
        )


def test_a_group_of_the_wrong_type_and_a_trainer_option_are_refused():
    with pytest.raises(TypeError, match="timeouts must be a Timeouts"):
        ParameterServer(WEIGHTS, "downpour", num_workers=1, secret=SECRET, timeouts=Capacity())
    with pytest.raises(TypeError, match="snapshot_interval"):
        ParameterServer(WEIGHTS, "downpour", num_workers=1, secret=SECRET, snapshot_interval=1.0)


def test_flat_options_and_groups_give_the_same_server(tmp_path):
    path = tmp_path / "c.npz"
    flat = ParameterServer(
        WEIGHTS,
        "downpour",
        num_workers=2,
        secret=SECRET,
        round_timeout=2.0,
        send_timeout=5.0,
        checkpoint_path=path,
        checkpoint_every=3,
        max_connections=4,
        communication_window=7,
    )
    grouped = ParameterServer(
        WEIGHTS,
        "downpour",
        num_workers=2,
        secret=SECRET,
        timeouts=Timeouts(round_timeout=2.0, send_timeout=5.0),
        checkpoints=CheckpointOptions(checkpoint_path=str(path), checkpoint_every=3),
        capacity=Capacity(max_connections=4),
        communication_window=7,
    )
    assert flat.limits == grouped.limits
    assert flat.limits.timeouts == Timeouts(round_timeout=2.0, send_timeout=5.0)
    assert (flat.limits.max_connections, flat.limits.receive_buffers) == (4, 1)
    assert flat.algorithm.settings == grouped.algorithm.settings
    for server in (flat, grouped):
        assert server.checkpointer is not None
        assert (server.checkpointer.every, server.checkpointer.interval) == (3, None)


def test_a_flat_checkpoint_path_needs_a_period_but_a_group_brings_its_own(tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(ValueError, match="checkpoint_every and/or checkpoint_interval"):
        ParameterServer(WEIGHTS, "downpour", num_workers=1, secret=SECRET, checkpoint_path=path)
    server = ParameterServer(
        WEIGHTS,
        "downpour",
        num_workers=1,
        secret=SECRET,
        checkpoints=CheckpointOptions(checkpoint_path=str(path)),
    )
    assert server.checkpointer is not None and server.checkpointer.interval == 60.0


def test_bad_flat_options_are_refused_naming_them():
    for bad, name in [
        ({"idle_timeout": 0}, "idle_timeout"),
        ({"center_buffers": 1}, "center_buffers"),
        ({"receive_buffers": 0}, "receive_buffers"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
    ]:
        with pytest.raises(ValueError, match=name):
            ParameterServer(WEIGHTS, "downpour", num_workers=1, secret=SECRET, **bad)


def test_each_shard_enforces_the_timeouts_group():
    """The groups cross the control pipe to every shard process and are enforced there."""
    server = ShardedParameterServer(
        WEIGHTS,
        "downpour",
        num_workers=1,
        secret=SECRET,
        shards=2,
        timeouts=Timeouts(handshake_timeout=0.5),
        capacity=Capacity(max_connections=3),
    )
    server.start()
    try:
        for port in server.ports:
            peer = RawPeer(port)
            try:
                assert peer.receive().op is Op.CHALLENGE
                reply = peer.receive()
                assert reply is not None and reply.op is Op.ERROR
                assert "handshake not completed within 0.5 s" in reply.fields["message"]
            finally:
                peer.close()
    finally:
        server.stop()
