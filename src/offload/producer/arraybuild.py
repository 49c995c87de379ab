"""Building a ``map``'s array: the common spec checked, sealed and signed once, then each
item's own fields checked, signed and packed into the array's item table.

The table holds, for item ``i``, its class ("" for the array's), its own fields as JSON and
their MAC for its job id (:func:`offload.cache.jobseal.sign_item`); the item's spec is the
common spec with those fields over it (:func:`offload.spec.arrays.item_spec`).

**The fast path.** An item that is a plain mapping of ``params``, ``env``, ``labels``,
``name`` and ``inputs`` given by URI — what a big map is made of — is checked for what could
make its merged spec invalid (names, types, JSON, Unicode, size) and written as it is: no
spec is built for it, and the common spec's checks are not repeated. **The full path.** Any
other item (other options, input files or content ids to upload or check, secrets, a
``deliver`` template that names inputs, anything the fast checks are not sure of) is checked
and built as a job is (:meth:`~offload.producer.client.Client.draft`, its inputs uploaded),
and the table holds how its sealed spec differs from the common one. Both give the spec a
full build gives (``tests/test_arraybuild.py`` checks it item for item), and a bad item is
named ``each[<i>].<field>`` by the full path's checks.

Every item is checked before any input is uploaded, and everything before anything is
written: the table is packed in memory, a part of :data:`TABLE_PART` items at a time.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from offload.broker.arrays import TABLE_PART, ArrayInfo, pack
from offload.cache.jobseal import seal_array, seal_job, sign_item
from offload.errors import SpecError
from offload.producer.items import within
from offload.producer.options import JobOptions
from offload.spec import MAX_SPEC_VALUES, JobSpec, param_text
from offload.spec.arrays import item_fields, item_id
from offload.spec.names import ENV_RE, NAME_RE, PLATFORM_ENV
from offload.spec.uris import has_credentials, is_uri, parse_uri

if TYPE_CHECKING:
    from offload.producer.client import Client, Draft

FAST = frozenset({"params", "env", "labels", "name", "inputs"})
# an item's fields as JSON bytes, times this, bound what they add to the spec's size check
SIZE_BOUND = 6


class ArrayBuilder:
    """One ``map``'s array, built from its common options and its items."""

    def __init__(
        self,
        client: Client,
        image: str,
        command: str | Sequence[str] | None,
        base: JobOptions,
        count: int,
        batch: int,
    ) -> None:
        self.client, self.image, self.command = client, image, command
        self.base, self.count, self.batch = base, count, batch
        self.id = uuid.uuid4().hex[:24]
        # a deliver template naming inputs is filled in item by item (the full path)
        self.per_item_deliver = isinstance(base.deliver, str) and "{input." in base.deliver
        opts = base.replace(task=(0, count))
        if self.per_item_deliver:
            opts = opts.replace(deliver=None)
        self.draft = client.draft(image, command, opts)  # the common options, checked once
        fields = self.draft.fields
        self.secret: frozenset[str] = fields["secret"]
        self.params_upper = {k.upper(): k for k in fields["params"]}
        self.size = sum(len(a.encode()) + 1 for a in JobSpec.create(
            image=image, command=command).command or ())  # fmt: skip
        self.size += sum(len(k) + len(param_text(v).encode()) for k, v in fields["params"].items())
        self.size += sum(len(k) + len(v.encode()) for k, v in fields["env"].items())

    # -- the fast path -----------------------------------------------------------------------

    def fast(self, item: Any) -> str | None:
        """``item``'s fields as the table holds them (JSON), when the fast checks are sure
        they make a valid spec over the common one; None: build it in full."""
        if type(item) is not dict or not item.keys() <= FAST or self.per_item_deliver:
            return None
        params = item.get("params")
        if params is not None and not self._params(params):
            return None
        env = item.get("env")
        if env is not None and not self._env(env):
            return None
        labels = item.get("labels")
        if labels is not None and not (type(labels) is dict and all(
                type(k) is str and type(v) is str for k, v in labels.items())):  # fmt: skip
            return None
        name = item.get("name")
        if "name" in item and not (type(name) is str and 1 <= len(name) <= 200):
            return None
        inputs = item.get("inputs")
        if inputs is not None and not self._uris(inputs):
            return None
        try:
            text = json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
            size = len(text.encode("utf-8"))  # lone surrogates raise
        except (TypeError, ValueError, UnicodeEncodeError):
            return None
        if "\\u0000" in text or self.size + SIZE_BOUND * size > MAX_SPEC_VALUES:
            return None
        return text

    def _params(self, params: Any) -> bool:
        if type(params) is not dict:
            return False
        upper = set()
        for k in params:
            if type(k) is not str or not ENV_RE.match(k) or k in self.secret:
                return False
            u = k.upper()
            if self.params_upper.get(u, k) != k or u in upper:
                return False
            upper.add(u)
        return True

    def _env(self, env: Any) -> bool:
        if type(env) is not dict:
            return False
        for k, v in env.items():
            if type(k) is not str or type(v) is not str or not ENV_RE.match(k):
                return False
            if k in self.secret or (k.upper().startswith("OFFLOAD_") and k not in PLATFORM_ENV):
                return False
        return True

    @staticmethod
    def _uris(inputs: Any) -> bool:
        if type(inputs) is not dict:
            return False
        for k, v in inputs.items():
            if type(k) is not str or not NAME_RE.match(k) or k in (".", ".."):
                return False
            if type(v) is not str or not is_uri(v) or has_credentials(v):
                return False
            try:
                parse_uri(v)
            except ValueError:
                return False
        return True

    # -- the whole array ---------------------------------------------------------------------

    def build(
        self,
        each: Sequence[Mapping[str, Any] | JobOptions],
        progress: Callable[[str, int, int], object] | None = None,
    ) -> tuple[ArrayInfo, list[bytes]]:
        """Check every item, then upload the inputs and pack the table: the array's record
        and its table's parts; :class:`SpecError` naming ``each[<i>]`` and nothing uploaded
        when an item is bad. ``progress(stage, done, total)`` is told how far it is
        (``checking`` the items, a part at a time; ``building`` the items built in full)."""
        tell = progress or (lambda stage, done, total: None)
        key = self.client.key
        parts: list[bytes | list[Any]] = []
        rows: list[Any] = []
        full: list[tuple[int, Draft]] = []
        for i, item in enumerate(each):
            text = self.fast(item)
            if text is None:
                full.append((i, self._draft(i, item)))
                rows.append(None)  # filled in once every item is checked
            else:
                job_id = f"{self.id}{i:08x}"
                rows.append(("", text, sign_item(key, job_id, text.encode("utf-8"))))
            if len(rows) == TABLE_PART:
                parts.append(rows if full and full[-1][0] >= i - TABLE_PART + 1 else pack(rows))
                rows = []
                tell("checking", i + 1, self.count)
        if rows:
            parts.append(rows)
        common = seal_array(key, self.id, self.client._build(self.draft))  # inputs uploaded
        others: dict[str, int] = {}  # items of another class than the common spec's
        data = common.model_dump(mode="json")
        tell("checking", self.count, self.count)
        for k, (i, draft) in enumerate(full):
            tell("building", k, len(full))
            try:
                spec = self.client._build(draft)  # its local inputs uploaded
            except SpecError as exc:
                raise within(f"each[{i}]", exc) from None
            job_id = item_id(self.id, i)
            sealed = seal_job(key, job_id, spec)
            box = sealed.seal.box if sealed.seal else ""
            own = item_fields(data, sealed.model_dump(mode="json"), box)
            text = json.dumps(own, separators=(",", ":"), ensure_ascii=False)
            cls = "" if draft.queue == self.draft.queue else draft.queue
            if cls:
                others[cls] = others.get(cls, 0) + 1
            part = parts[i // TABLE_PART]
            assert isinstance(part, list)
            part[i % TABLE_PART] = (cls, text, sign_item(key, job_id, text.encode("utf-8")))
        info = ArrayInfo(
            id=self.id,
            count=self.count,
            name=self.base.name or self.image,
            image=common.image,
            created_at=time.time(),
            batch=self.batch,
            cls=self.draft.queue,
            spec=common.encode(),
            classes={self.draft.queue: self.count - sum(others.values()), **others}
            if others
            else {},
        )
        return info, [p if isinstance(p, bytes) else pack(p) for p in parts]

    def _draft(self, i: int, item: Any) -> Draft:
        try:
            if not isinstance(item, Mapping | JobOptions):
                raise SpecError("", f"expected a mapping of job options, got {item!r}")
            opts = self.base.merged(item).replace(task=(i, self.count))
            return self.client.draft(self.image, self.command, opts)
        except SpecError as exc:
            raise within(f"each[{i}]", exc) from None


__all__ = ["FAST", "ArrayBuilder"]
