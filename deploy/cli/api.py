"""How an operator command reaches a service: the target, one authenticated request, and an
error answer turned into a clear message and an exit code.

The target is, first to last:
  - `--url` and `--token` on the command line;
  - TASLEEM_<SERVICE>_URL and TASLEEM_<SERVICE>_ADMIN_TOKEN (e.g. TASLEEM_ALLOCATOR_URL,
    TASLEEM_ALLOCATOR_ADMIN_TOKEN);
  - the local stack of `tasleem up` (`--home`, default `.tasleem`): its `stack.json` names the
    URLs, and `admin/<service>-<role>.token` holds the local operator's token for the role the
    command needs (`read` for looking, `operate` for changing).
A local token file is only ever sent to the local stack's own URL: a command aimed elsewhere
needs a token of that service.

Exit codes: 0 done; 1 done, with something left to look at (a rekey that could not open every
code, a resend whose part failed); 2 refused (bad input, a token without the right role, an
unknown store or order); 3 no answer (the service is not reachable, or failed).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Literal, ParamSpec, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import typer
from rich.console import Console

from deploy.embedded import local

Role = Literal["read", "operate"]
P = ParamSpec("P")
R = TypeVar("R")
DONE, ATTENTION, REFUSED, UNREACHABLE = 0, 1, 2, 3
TIMEOUT_S = 60.0
console = Console()
errors = Console(stderr=True)

# the options every API command takes, named alike everywhere
URL = Annotated[
    str | None,
    typer.Option(help="The service's URL (default: TASLEEM_<SERVICE>_URL, else the local stack)."),
]
TOKEN = Annotated[
    str | None,
    typer.Option(
        help="An admin token of the service (default: TASLEEM_<SERVICE>_ADMIN_TOKEN, else the "
        "local stack's .tasleem/admin/<service>-<role>.token). Prefer the variable: shells keep "
        "their command lines."
    ),
]
HOME = Annotated[Path, typer.Option(help="The local stack's folder, used when no URL is given.")]
JSON = Annotated[bool, typer.Option("--json", help="Print the service's JSON answer, for scripts.")]


class Failed(Exception):
    """A command that cannot go on: the message for the operator and the exit code."""

    def __init__(self, message: str, code: int = REFUSED):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    service: str
    url: str
    token: str = ""

    def __repr__(self) -> str:  # never the token
        return f"Target({self.service!r}, {self.url!r})"


def env_names(service: str) -> tuple[str, str]:
    prefix = f"TASLEEM_{service.upper()}"
    return f"{prefix}_URL", f"{prefix}_ADMIN_TOKEN"


def target(
    service: str, role: Role, url: str | None, token: str | None, home: Path = local.DEFAULT_HOME
) -> Target:
    url_env, token_env = env_names(service)
    url = url or os.environ.get(url_env, "")
    if url:
        token = token or os.environ.get(token_env, "")
    else:
        # the local stack: its own token file, never a token from the environment (meant for
        # the service the environment names), and only to this machine
        try:
            url = str(local.stack_info(home)[service])
        except local.NoStack as exc:
            raise Failed(f"{exc}; or name the {service} with --url or {url_env}") from None
        except (KeyError, ValueError):
            raise Failed(f"{home / 'stack.json'} names no {service}") from None
        if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise Failed(f"{home / 'stack.json'} names {url} for the {service}, not this machine")
        token = token or local.admin_token(home, service, role)
    if not token:
        raise Failed(
            f"no admin token for the {service}: pass --token or set {token_env} "
            f"(a {role} token; `tasleem admin token` makes one)"
        )
    return Target(service, url.rstrip("/"), token)


def path(*parts: str) -> str:
    """A URL path from parts that may hold any character (an order key, a sku)."""
    return "/" + "/".join(quote(p, safe=":") if i else p for i, p in enumerate(parts))


def call(
    to: Target,
    method: str,
    url_path: str,
    *,
    params: Mapping[str, str | list[str]] | None = None,
    body: object = None,
    data: IO[bytes] | None = None,
    ok: tuple[int, ...] = (200,),
    timeout_s: float | None = TIMEOUT_S,
) -> tuple[int, Any]:
    """One request with the bearer token; the answer's status and JSON. Any status outside
    `ok` raises Failed with the service's reason."""
    return asyncio.run(_call(to, method, url_path, params, body, data, ok, timeout_s))


async def _call(
    to: Target,
    method: str,
    url_path: str,
    params: Mapping[str, str | list[str]] | None,
    body: object,
    data: IO[bytes] | None,
    ok: tuple[int, ...],
    timeout_s: float | None,
) -> tuple[int, Any]:
    query = [
        (k, v) for k, vs in (params or {}).items() for v in ([vs] if isinstance(vs, str) else vs)
    ]
    options: dict[str, Any] = {"params": query}
    if data is not None:
        options["data"] = data
    elif body is not None:
        options["json"] = body
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.request(
                method,
                to.url + url_path,
                headers={"Authorization": f"Bearer {to.token}"},
                **options,
            ) as resp,
        ):
            text = await resp.text()
            status, retry_after = resp.status, resp.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise Failed(
            f"the {to.service} at {to.url} did not answer ({type(exc).__name__}): is it "
            "running? (`tasleem up` starts the local stack)",
            UNREACHABLE,
        ) from None
    try:
        answer = json.loads(text) if text else {}
    except ValueError:
        answer = {"error": "not_json", "detail": text[:200]}
    if status in ok:
        return status, answer
    raise refusal(to.service, status, answer, retry_after)


def refusal(service: str, status: int, answer: Any, retry_after: str | None = None) -> Failed:
    """The service's answer to a request it did not carry out, as the operator reads it."""
    detail = answer.get("detail") if isinstance(answer, dict) else None
    error = answer.get("error") if isinstance(answer, dict) else None
    reason = f"{detail} ({error})" if detail and error else str(detail or error or "no reason")
    if status == 401:
        return Failed(
            f"the {service} refused the token: {reason}; check --token or {env_names(service)[1]}"
        )
    if status == 403 and error == "forbidden":
        return Failed(f"{reason}: this command needs an operate token of the {service}")
    if status == 429 and retry_after:
        return Failed(f"{reason}; try again in {retry_after} s")
    if status >= 500:
        return Failed(f"the {service} answered {status}: {reason}", UNREACHABLE)
    return Failed(reason)


def handled(command: Callable[P, R]) -> Callable[P, R]:
    """A command whose Failed becomes its message on stderr and its exit code."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except Failed as exc:
            errors.print(f"[red]{exc}[/red]", soft_wrap=True, highlight=False)
            raise typer.Exit(exc.code) from None

    return run


def plural(count: int, word: str) -> str:
    """`1 code`, `2 codes`, `3 batches`."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {word}{'es' if word.endswith(('ch', 's')) else 's'}"


def show_json(answer: Any) -> None:
    typer.echo(json.dumps(answer, ensure_ascii=False, indent=None))
