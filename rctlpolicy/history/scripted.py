"""A scripted usage timeline for the simulated host (`rctlpolicy sim timeline`).

The simulated host's usage stands still unless someone edits it; a scripted timeline
fast-forwards it: the samples the daemon would have written over a past window go straight
into the history database, and the host file is left at the last sample. The script is YAML:

    duration: 2d              # the window, ending now
    interval: 60s             # one sample per interval, as --history.interval
    jails:
      db1:
        memoryuse: {base: 3g, daily: 400m, noise: 50m}
        swapuse: {base: 200m, spikes: {every: 6h, for: 10m, add: 500m}}

Each value is `base + daily x sin(time of day) + noise x (a repeatable random in -1..1) +
add` while a spike lasts, never below 0; amounts take rctl's suffixes. Resources a jail's script
does not name keep the host's current usage.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rctlpolicy.amounts import AmountError, expand_number
from rctlpolicy.config import ConfigError, parse_duration_setting
from rctlpolicy.model import Resource

DAY = 86400.0


class ScriptError(ValueError):
    """The timeline script is wrong; the message says where."""


@dataclass(frozen=True, slots=True)
class Shape:
    base: float
    daily: float = 0.0
    noise: float = 0.0
    spike_every: float = 0.0
    spike_for: float = 0.0
    spike_add: float = 0.0

    def value(self, time: float, draw: float) -> int:
        value = self.base + self.daily * math.sin(2 * math.pi * (time % DAY) / DAY)
        value += self.noise * draw
        if self.spike_every and (time % self.spike_every) < self.spike_for:
            value += self.spike_add
        return max(0, round(value))


@dataclass(frozen=True, slots=True)
class Script:
    duration: float
    interval: float
    jails: Mapping[str, Mapping[Resource, Shape]]

    def samples(
        self, end: float, current: Mapping[str, Mapping[Resource, int]]
    ) -> Iterator[tuple[float, dict[str, dict[Resource, int]]]]:
        """(time, every jail's usage) from end - duration to end, one per interval; the
        resources a jail's script does not name keep `current`'s values."""
        first = end - self.duration
        count = int(self.duration // self.interval)
        draws = {
            (jail, resource): random.Random(zlib.crc32(f"{jail}:{resource}".encode()))  # noqa: S311
            for jail, shapes in self.jails.items()
            for resource in shapes
        }
        for index in range(count + 1):
            time = first + index * self.interval
            usage: dict[str, dict[Resource, int]] = {}
            for jail, shapes in self.jails.items():
                values = dict(current.get(jail, {}))
                for resource, shape in shapes.items():
                    values[resource] = shape.value(time, draws[(jail, resource)].uniform(-1, 1))
                usage[jail] = values
            yield time, usage


def _amount(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ScriptError(f"{where}: must be an amount (such as 512m or 40)")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ScriptError(f"{where}: '{value}' is not an amount (such as 512m or 40)")
        return float(value)
    if not isinstance(value, str):
        raise ScriptError(f"{where}: must be an amount (such as 512m or 40)")
    try:
        return float(expand_number(value).value)
    except AmountError:
        raise ScriptError(f"{where}: '{value}' is not an amount (such as 512m or 40)") from None


def _duration(value: Any, where: str) -> float:
    try:
        return parse_duration_setting(value, where)
    except ConfigError as error:
        raise ScriptError(str(error)) from None


def parse_script(data: Any) -> Script:
    """A timeline script's YAML, loaded, as a Script; raises ScriptError."""
    if not isinstance(data, dict):
        raise ScriptError("a timeline script is a mapping with duration, interval and jails")
    unknown = set(data) - {"duration", "interval", "jails"}
    if unknown:
        raise ScriptError(f"unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    duration = _duration(data.get("duration", "2d"), "duration")
    interval = _duration(data.get("interval", "60s"), "interval")
    if duration / interval > 1_000_000:
        raise ScriptError("more than a million samples: lengthen the interval")
    jails = data.get("jails")
    if not isinstance(jails, dict) or not jails:
        raise ScriptError("jails: a mapping of jail names to their resources")
    parsed: dict[str, dict[Resource, Shape]] = {}
    for jail, resources in jails.items():
        if not isinstance(resources, dict):
            raise ScriptError(f"jails.{jail}: a mapping of resources to shapes")
        shapes: dict[Resource, Shape] = {}
        for name, given in resources.items():
            where = f"jails.{jail}.{name}"
            try:
                resource = Resource(str(name))
            except ValueError:
                raise ScriptError(f"{where}: unknown resource") from None
            spec = given if isinstance(given, dict) else {"base": given}
            extra = set(spec) - {"base", "daily", "noise", "spikes"}
            if extra:
                raise ScriptError(f"{where}: unknown key(s): {', '.join(sorted(map(str, extra)))}")
            spikes = spec.get("spikes") or {}
            if not isinstance(spikes, dict) or set(spikes) - {"every", "for", "add"}:
                raise ScriptError(f"{where}.spikes: a mapping of every, for and add")
            if spikes and "every" not in spikes:
                raise ScriptError(f"{where}.spikes: says how often in every (such as 6h)")
            shapes[resource] = Shape(
                _amount(spec.get("base", 0), f"{where}.base"),
                _amount(spec.get("daily", 0), f"{where}.daily"),
                _amount(spec.get("noise", 0), f"{where}.noise"),
                _duration(spikes["every"], f"{where}.spikes.every") if spikes else 0.0,
                _duration(spikes.get("for", "5m"), f"{where}.spikes.for") if spikes else 0.0,
                _amount(spikes.get("add", 0), f"{where}.spikes.add") if spikes else 0.0,
            )
        parsed[str(jail)] = shapes
    return Script(duration, interval, parsed)
