"""JobSpec validation: what a user may ask for, and the message when they may not."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.errors import SpecError
from offload.spec import (
    MAX_MEMORY,
    MIN_MEMORY,
    GiB,
    JobSpec,
    KiB,
    MiB,
    TiB,
    format_memory,
    parse_memory,
)

HEX = "0123456789abcdef"
GOOD_ID = "sha256:" + "ab" * 32
VALID_ID = re.compile(r"sha256:[0-9a-f]{64}")


def refused(field: str, expected: str, **fields: Any) -> SpecError:
    """Assert that ``fields`` are refused naming ``field`` and saying ``expected``."""
    fields.setdefault("image", "offload/base")
    with pytest.raises(SpecError) as info:
        JobSpec.create(**fields)
    err = info.value
    assert err.field == field, str(err)
    assert expected in err.message, str(err)
    assert str(err).startswith(f"{field}: ")
    return err


# -- memory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512m", 512 * MiB),
        ("4g", 4 * GiB),
        ("4G", 4 * GiB),
        ("2GiB", 2 * GiB),
        ("2gb", 2 * GiB),
        ("1.5g", 3 * GiB // 2),
        ("0.5t", TiB // 2),
        ("6m", 6 * MiB),
        ("4t", 4 * TiB),
        ("65536k", 64 * MiB),
        ("10485760", 10 * MiB),
        ("10485760b", 10 * MiB),
        (" 8 m ", 8 * MiB),
        (10 * MiB, 10 * MiB),
        (1.5 * GiB, 3 * GiB // 2),
    ],
)
def test_memory_uses_dockers_binary_units(text: str | int, size: int) -> None:
    assert parse_memory(text) == size
    spec = JobSpec.create(image="offload/base", resources={"memory": text})
    assert spec.resources.memory == size


UNITS = [
    ("", 1),
    ("b", 1),
    ("k", KiB),
    ("K", KiB),
    ("kb", KiB),
    ("KiB", KiB),
    ("m", MiB),
    ("M", MiB),
    ("mb", MiB),
    ("MiB", MiB),
    ("g", GiB),
    ("G", GiB),
    ("gb", GiB),
    ("GiB", GiB),
    ("t", TiB),
    ("T", TiB),
    ("TiB", TiB),
]


@st.composite
def size_with_unit(draw: st.DrawFn, lo: int, hi: int) -> tuple[str, int]:
    """A string ``f"{n}{unit}"`` and the byte count it must mean, within [lo, hi]."""
    unit, factor = draw(st.sampled_from([(u, f) for u, f in UNITS if -(-lo // f) <= hi // f]))
    n = draw(st.integers(-(-lo // factor), hi // factor))
    return f"{n}{unit}", n * factor


@given(size_with_unit(MIN_MEMORY, MAX_MEMORY))
def test_any_whole_number_of_any_unit_parses_exactly(case: tuple[str, int]) -> None:
    text, size = case
    assert parse_memory(text) == size


@given(st.integers(MIN_MEMORY, MAX_MEMORY))
def test_format_memory_round_trips(size: int) -> None:
    text = format_memory(size)
    assert parse_memory(text) == size
    assert re.fullmatch(r"\d+(TiB|GiB|MiB|KiB|B)", text)


def test_format_memory_picks_the_largest_exact_unit() -> None:
    assert format_memory(2 * GiB) == "2GiB"
    assert format_memory(1536 * MiB) == "1536MiB"
    assert format_memory(4 * TiB) == "4TiB"
    assert format_memory(6 * MiB + 1) == f"{6 * MiB + 1}B"


@given(size_with_unit(1, MIN_MEMORY - 1))
def test_too_little_memory_is_refused(case: tuple[str, int]) -> None:
    text, _ = case
    refused("resources.memory", "at least 6m", resources={"memory": text})


@given(size_with_unit(MAX_MEMORY + 1, 1024 * MAX_MEMORY))
def test_absurd_memory_is_refused(case: tuple[str, int]) -> None:
    text, _ = case
    refused("resources.memory", "at most 4t", resources={"memory": text})


@pytest.mark.parametrize(
    "text",
    ["12zz", "4 gigs", "1p", "1e9", "-1g", "", "m", "1.g", ".5g", "g1", "0x10m", "1,5g",
     "4g4", "\uff15\uff11\uff12m", "512m\n512m", "nan", "inf"],
)  # fmt: skip
def test_unknown_memory_units_are_refused(text: str) -> None:
    err = refused(
        "resources.memory", "expected a size such as 512m, 4g or 2GiB", resources={"memory": text}
    )
    assert "units b, k, m, g, t" in err.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "expected a size"),
        ([512], "expected a size"),
        (True, "expected a size"),
        (float("nan"), "expected a size"),
        (float("inf"), "at most 4t"),
        ("1" + "0" * 400, "at most 4t"),
        (0, "at least 6m"),
        (-MiB, "at least 6m"),
        (5 * MiB, "at least 6m"),
    ],
)
def test_memory_of_the_wrong_kind_is_refused_not_crashed(value: Any, expected: str) -> None:
    refused("resources.memory", expected, resources={"memory": value})


# -- cpu, gpus, retries, timeout -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        (0, "greater than 0"),
        (-1, "greater than 0"),
        (-0.5, "greater than 0"),
        (0.001, "at least 0.01"),
        (1025, "less than or equal to 1024"),
        (1e9, "less than or equal to 1024"),
        (float("nan"), "finite number"),
        (float("inf"), "finite number"),
        ("lots", "valid number"),
    ],
)
def test_bad_cpu_is_refused(cpu: Any, expected: str) -> None:
    refused("resources.cpu", expected, resources={"cpu": cpu})


@given(st.floats(0.01, 1024))
def test_any_cpu_in_range_is_kept(cpu: float) -> None:
    assert JobSpec.create(image="offload/base", resources={"cpu": cpu}).resources.cpu == cpu


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [(-1, "greater than or equal to 0"), (65, "less than or equal to 64"), (10**6, "less than"),
     (1.5, "fractional part"), ("two", "valid integer")],
)  # fmt: skip
def test_bad_gpus_are_refused(gpus: Any, expected: str) -> None:
    refused("resources.gpus", expected, resources={"gpus": gpus})


@pytest.mark.parametrize(
    ("retries", "expected"),
    [(-1, "greater than or equal to 0"), (11, "less than or equal to 10"), (0.5, "fractional")],
)
def test_retries_are_bounded(retries: Any, expected: str) -> None:
    refused("retries", expected, retries=retries)
    assert JobSpec.create(image="offload/base", retries=10).retries == 10


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [(0, "greater than 0"), (-1, "greater than 0"), (-1e-9, "greater than 0"),
     (float("inf"), "finite number"), (float("nan"), "finite number")],
)  # fmt: skip
def test_timeout_must_be_positive_and_finite(timeout: float, expected: str) -> None:
    refused("timeout", expected, timeout=timeout)


def test_resources_default_to_one_cpu_512m_no_gpu() -> None:
    res = JobSpec.create(image="offload/base").resources
    assert (res.cpu, res.memory, res.gpus) == (1.0, 512 * MiB, 0)


# -- inputs ----------------------------------------------------------------------------------


def test_good_inputs_are_kept() -> None:
    spec = JobSpec.create(image="offload/base", inputs={"photo.jpg": GOOD_ID, "_x-1": GOOD_ID})
    assert spec.inputs == {"photo.jpg": GOOD_ID, "_x-1": GOOD_ID}


@pytest.mark.parametrize(
    "oid",
    [
        "sha256:" + "AB" * 32,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "g" * 64,
        "SHA256:" + "a" * 64,
        "sha1:" + "a" * 40,
        "md5:" + "a" * 32,
        "a" * 64,
        "sha256:",
        "sha256:" + "a" * 64 + "\n",
        " sha256:" + "a" * 64,
        "sha256: " + "a" * 63,
        "",
    ],
)
def test_malformed_input_ids_are_refused(oid: str) -> None:
    refused("inputs.photo", "sha256:<64 hex digits>", inputs={"photo": oid})


def near_ids() -> st.SearchStrategy[str]:
    """Strings close to a valid id: one edit away, or a valid id with something around it."""
    valid = st.text(HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h)
    return st.one_of(
        st.text(),
        st.tuples(valid, st.integers(0, 70), st.text(min_size=1, max_size=2)).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
        ),
        st.tuples(valid, st.integers(0, 70)).map(lambda t: t[0][: t[1]] + t[0][t[1] + 1 :]),
        st.tuples(valid, st.integers(0, 70), st.characters()).map(
            lambda t: t[0][: t[1]] + t[2] + t[0][t[1] + 1 :]
        ),
        valid.map(str.upper),
    )


@given(near_ids())
def test_any_string_that_is_not_a_sha256_id_is_refused(oid: str) -> None:
    if VALID_ID.fullmatch(oid):
        assert JobSpec.create(image="offload/base", inputs={"photo": oid}).inputs["photo"] == oid
    else:
        refused("inputs.photo", "sha256:<64 hex digits>", inputs={"photo": oid})


@pytest.mark.parametrize(
    "name", ["a/b", "..", ".", "", ".hidden", "-x", "a b", "x\n", "é", "a" * 129, "../etc"]
)
def test_bad_input_names_are_refused(name: str) -> None:
    refused("inputs", "must be a plain file name", inputs={name: GOOD_ID})


# -- image -----------------------------------------------------------------------------------

VALID_IMAGES = [
    "offload/fingerprint",
    "offload/base",
    "busybox",
    "busybox:1.36",
    "localhost:5000/a/b:1.2",
    "localhost/a",
    "registry.example.com/team/tool:1.2",
    "REG.example.com/team/tool",
    "ghcr.io/o/r@sha256:" + "0123456789abcdef" * 4,
    "ghcr.io/o/r:v1@sha256:" + "0123456789abcdef" * 4,
    "a__b/c-d/e.f",
    "a--b",
    "x:" + "t" * 128,
]
INVALID_IMAGES = [
    "UPPER/case",
    "Upper/case",
    "a/UPPER",
    "Offload",
    "a b",
    "x:",
    "-x",
    "x-",
    "",
    "a___b",
    "a.-b",
    "a//b",
    "/a",
    "a/",
    "a:tág",
    "x:" + "t" * 129,
    "offload/base\n",
    "offload/base ",
    "ghcr.io/o/r@sha256:short",
    "a@b",
    "a:b:c",
    "é/x",
    "a" * 256,
]


@pytest.mark.parametrize("image", VALID_IMAGES)
def test_valid_image_references_are_kept(image: str) -> None:
    assert JobSpec.create(image=image).image == image


@pytest.mark.parametrize("image", INVALID_IMAGES)
def test_invalid_image_references_are_refused(image: str) -> None:
    refused("image", "expected a Docker image reference like 'offload/fingerprint'", image=image)


@given(st.sampled_from(VALID_IMAGES), st.integers(0, 300), st.sampled_from(" \n\t\x00é!$*,;"))
def test_an_image_with_a_stray_character_is_refused(image: str, at: int, char: str) -> None:
    refused("image", "Docker image reference", image=image[:at] + char + image[at:])


# -- env, params, secrets --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["OFFLOAD_JOB_ID", "OFFLOAD_X", "offload_param_x", "Offload_Y"])
def test_the_offload_env_prefix_is_reserved(name: str) -> None:
    refused("env", "the OFFLOAD_ prefix is reserved", env={name: "1"})


@pytest.mark.parametrize("name", ["1X", "A-B", "A B", "", "A=B", "X\n", "É"])
def test_bad_env_names_are_refused(name: str) -> None:
    refused("env", "must match [A-Za-z_][A-Za-z0-9_]*", env={name: "1"})


def test_env_values_cannot_hold_nul() -> None:
    refused("env.A", "NUL", env={"A": "x\x00y"})
    refused("params.a", "NUL", params={"a": "x\x00y"})
    refused("command.1", "NUL", command=["echo", "x\x00y"])


@pytest.mark.parametrize("name", ["a-b", "1x", "", "a.b", "ä"])
def test_bad_param_names_are_refused(name: str) -> None:
    refused("params", "it becomes OFFLOAD_PARAM_<NAME>", params={name: 1})


def test_params_whose_names_clash_in_the_environment_are_refused() -> None:
    refused("params.WHO", "OFFLOAD_PARAM_WHO", params={"who": "a", "WHO": "b"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), object(), b"bytes", {1, 2}])
def test_params_must_be_json(value: Any) -> None:
    refused("params.x", "expected a JSON value", params={"x": value})


def test_secret_names_must_be_params_or_env() -> None:
    refused("secret", "neither params nor env", params={"a": 1}, secret=["token"])
    spec = JobSpec.create(
        image="offload/base", params={"token": "t"}, env={"KEY": "k"}, secret=["token", "KEY"]
    )
    assert spec.secret == {"token", "KEY"}


def test_unknown_fields_are_refused() -> None:
    refused("cpus", "unknown field", cpus=2)
    refused("resources.disk", "unknown field", resources={"disk": "1g"})


def test_the_image_is_required() -> None:
    with pytest.raises(SpecError) as info:
        JobSpec.create()
    assert (info.value.field, info.value.message) == ("image", "Field required")
    refused("image", "valid string", image=None)


@pytest.mark.parametrize("network", ["orders\n", "", "-x", "a b", "x" * 129, "é"])
def test_a_network_that_is_no_docker_network_name_is_refused(network: str) -> None:
    refused("network", "name of a user-defined Docker network", network=network)


@pytest.mark.parametrize("network", [True, False, "orders", "team_a.orders-db", "x" * 128])
def test_network_names_and_switches_are_kept(network: bool | str) -> None:
    assert JobSpec.create(image="offload/base", network=network).network == network


def test_several_problems_report_the_first_and_count_the_rest() -> None:
    err = refused("image", "Docker image reference", image="A B", retries=-1, timeout=0)
    assert "2 more problem(s)" in err.message


def test_a_command_string_is_split_like_a_shell() -> None:
    spec = JobSpec.create(image="offload/base", command="sh -c 'echo hi there'")
    assert spec.command == ("sh", "-c", "echo hi there")
    assert JobSpec.create(image="offload/base", command=[]).command is None
    refused("command", "No closing quotation", command="echo 'a")


def test_specs_are_frozen() -> None:
    spec = JobSpec.create(image="offload/base")
    with pytest.raises(ValueError):
        spec.image = "other"  # type: ignore[misc]


# -- wire form -------------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
env_names = names.filter(lambda n: not n.upper().startswith("OFFLOAD_"))
safe_text = st.text(
    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=20
)
# short strings of awkward characters: NUL, lone surrogates, newlines, non-ASCII
any_text = st.text(st.sampled_from("a\x00\ud800\udfff\n\u00e9\u4e2d$ "), max_size=4)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | safe_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(safe_text, inner, max_size=3),
    max_leaves=8,
)
object_ids = st.text(HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h)


def unique_upper(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k.upper() not in {x.upper() for x in out}:
            out[k] = v
    return out


@st.composite
def job_specs(draw: st.DrawFn) -> JobSpec:
    params = unique_upper(draw(st.dictionaries(names, json_values, max_size=4)))
    env = draw(st.dictionaries(env_names, safe_text, max_size=3))
    secret = draw(st.sets(st.sampled_from(sorted({*params, *env}) or ["-"]), max_size=2))
    return JobSpec.create(
        image=draw(st.sampled_from(VALID_IMAGES)),
        command=draw(st.none() | st.lists(safe_text, min_size=1, max_size=3)),
        params=params,
        secret=secret if (params or env) else frozenset(),
        resources={
            "cpu": draw(st.floats(0.01, 1024)),
            "memory": draw(st.integers(MIN_MEMORY, MAX_MEMORY)),
            "gpus": draw(st.integers(0, 64)),
        },
        inputs=draw(
            st.dictionaries(
                st.from_regex(r"[a-z0-9_][a-z0-9._-]{0,10}", fullmatch=True), object_ids, max_size=3
            )
        ),
        timeout=draw(st.floats(1e-3, 1e7)),
        retries=draw(st.integers(0, 10)),
        env=env,
        network=draw(st.booleans()),
        cache=draw(st.booleans()),
        name=draw(st.none() | st.text(min_size=1, max_size=30)),
        labels=draw(st.dictionaries(safe_text, safe_text, max_size=2)),
    )


@settings(max_examples=150)
@given(job_specs())
def test_encode_decode_round_trips(spec: JobSpec) -> None:
    wire = spec.encode()
    json.loads(wire)  # plain JSON
    assert JobSpec.decode(wire) == spec
    assert JobSpec.decode(wire.encode()) == spec


@given(
    st.dictionaries(env_names, any_text, max_size=2),
    st.dictionaries(names, st.recursive(any_text, lambda t: st.lists(t, max_size=2)), max_size=2),
    st.lists(any_text, min_size=1, max_size=2),
    st.dictionaries(any_text, any_text, max_size=2),
)
def test_whatever_is_accepted_can_be_sent(
    env: dict[str, str], params: dict[str, Any], command: list[str], labels: dict[str, str]
) -> None:
    try:
        spec = JobSpec.create(
            image="offload/base", env=env, params=params, command=command, labels=labels
        )
    except SpecError:
        return
    assert JobSpec.decode(spec.encode()) == spec
    json.dumps(spec.redacted())


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"env": {"A": "\ud800"}}, "env.A"),
        ({"params": {"p": {"k": ["x", "\udcff"]}}}, "params.p.k.1"),
        ({"command": ["echo", "\ud800"]}, "command.1"),
        ({"labels": {"team": "\ud800"}}, "labels.team"),
    ],
)
def test_text_that_is_not_unicode_is_refused(fields: dict[str, Any], field: str) -> None:
    refused(field, "not valid Unicode text", **fields)


def test_params_normalise_to_their_json_form() -> None:
    spec = JobSpec.create(image="offload/base", params={"size": (1, 2), "n": 3})
    assert spec.params == {"size": [1, 2], "n": 3}
    assert JobSpec.decode(spec.encode()) == spec


@pytest.mark.parametrize("wire", ["", "{", "[]", '{"image": 5}', b"\xff\xfe", '{"image": "A B"}'])
def test_decoding_garbage_raises_spec_error(wire: str | bytes) -> None:
    with pytest.raises(SpecError):
        JobSpec.decode(wire)
