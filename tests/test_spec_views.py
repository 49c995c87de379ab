"""The spec as monitors see it (secrets masked) and its size limit."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload.errors import SpecError
from offload.spec import (
    JobSpec,
)
from tests.test_spec import HEX, env_names, job_specs, names, refused, unique_upper

# -- what monitors see -----------------------------------------------------------------------


@given(
    job_specs(),
    st.dictionaries(names, st.text(HEX, min_size=12, max_size=12), min_size=1, max_size=3),
    st.dictionaries(env_names, st.text(HEX, min_size=12, max_size=12), max_size=2),
)
def test_secrets_never_show_in_summary_or_redacted_view(
    base: JobSpec, secret_params: dict[str, str], secret_env: dict[str, str]
) -> None:
    secret_params = {f"s_{k}": f"S3CRET-{v}" for k, v in secret_params.items()}
    secret_env = {f"S_{k}": f"S3CRET-{v}" for k, v in secret_env.items()}
    params = unique_upper({**base.params, **secret_params})  # may drop a clashing s_G / s_g
    spec = JobSpec.create(
        **{
            **base.model_dump(),
            "params": params,
            "env": {**base.env, **secret_env},
            "secret": {*(k for k in secret_params if k in params), *secret_env},
        }
    )
    summary = spec.summary()
    view = json.dumps(spec.redacted())
    kept = [v for k, v in secret_params.items() if k in params]
    for value in [*kept, *secret_env.values()]:
        assert value not in summary
        assert value not in view
    shown = spec.redacted()
    for k in secret_params:
        if k in spec.params:
            assert shown["params"][k] == "***"
    for k in secret_env:
        assert shown["env"][k] == "***"
    assert shown["secret"] == sorted(spec.secret)
    # the wire form keeps the values: the worker runs from it
    assert (
        JobSpec.decode(spec.encode()).params.items()
        >= {k: v for k, v in secret_params.items() if k in spec.params}.items()
    )


def test_summary_shows_the_image_and_plain_params() -> None:
    spec = JobSpec.create(
        image="offload/thumbnail",
        params={"size": 256, "token": "hunter2"},
        env={"API_KEY": "k-123", "MODE": "fast"},
        secret=["token", "API_KEY"],
    )
    assert spec.summary() == "offload/thumbnail size=256 token=***"
    shown = spec.redacted()
    assert shown["params"] == {"size": 256, "token": "***"}
    assert shown["env"] == {"API_KEY": "***", "MODE": "fast"}
    assert "hunter2" not in json.dumps(shown) and "k-123" not in json.dumps(shown)


def test_display_name_prefers_the_name() -> None:
    assert JobSpec.create(image="offload/base").display_name() == "offload/base"
    assert JobSpec.create(image="offload/base", name="resize").display_name() == "resize"


# -- size limit: command, params and env together (issue 8) -----------------------------------


def test_a_200_kb_parameter_is_refused_naming_it_and_pointing_at_inputs() -> None:
    err = refused("params.blob", "over the limit of 64 KiB", params={"blob": "x" * 200_000})
    assert "inputs" in err.message and "/offload/in/" in err.message


def test_the_limit_counts_params_env_and_command_together() -> None:
    from offload.spec import MAX_SPEC_VALUES

    third = MAX_SPEC_VALUES // 3
    ok = {"params": {"a": "x" * (third - 100)}, "env": {"B": "y" * (third - 100)}}
    JobSpec.create(image="offload/base", **ok, command=["echo", "z" * (third - 100)])
    # each part alone is fine; together they are not, and the largest part is named
    refused(
        "command.1",
        "together are",
        **ok,
        command=["echo", "z" * (third + 200)],
    )
    refused("env.B", "over the limit", env={"B": "y" * (MAX_SPEC_VALUES + 1)})
    # JSON values count as their JSON text
    refused("params.rows", "over the limit", params={"rows": list(range(20_000))})


def test_the_size_refusal_never_shows_a_secret_value() -> None:
    with pytest.raises(SpecError) as info:
        JobSpec.create(image="offload/base", params={"token": "s3cr3t" * 20_000}, secret={"token"})
    assert info.value.field == "params.token"
    assert "s3cr3t" not in str(info.value)


def test_a_spec_at_the_limit_is_accepted_and_survives_the_wire() -> None:
    from offload.spec import MAX_SPEC_VALUES

    spec = JobSpec.create(image="offload/base", params={"p": "x" * (MAX_SPEC_VALUES - 1)})
    assert JobSpec.decode(spec.encode()) == spec
    refused("params.p", "over the limit", params={"p": "x" * MAX_SPEC_VALUES})
