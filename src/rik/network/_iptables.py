"""A thin async wrapper around the `iptables` command (works with the nft and legacy back ends)."""

from __future__ import annotations

import asyncio
import logging
import shlex

from rik.network._errors import NetworkError

logger = logging.getLogger(__name__)


class Iptables:
    def __init__(self, executable: str = "iptables") -> None:
        self._executable = executable

    async def _run(self, table: str, *args: str) -> tuple[int, str]:
        # `-w` waits for the xtables lock that other riklets (or kube-proxy, docker…) may hold.
        proc = await asyncio.create_subprocess_exec(
            self._executable,
            "-w",
            "-t",
            table,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def check(self, table: str, *args: str) -> None:
        code, out = await self._run(table, *args)
        if code != 0:
            raise NetworkError("IptablesFailed", f"iptables -t {table} {shlex.join(args)}: {out.strip() or code}")

    async def chain_exists(self, table: str, chain: str) -> bool:
        code, _ = await self._run(table, "-n", "-L", chain)
        return code == 0

    async def ensure_chain(self, table: str, chain: str) -> None:
        if not await self.chain_exists(table, chain):
            code, out = await self._run(table, "-N", chain)
            if code != 0 and not await self.chain_exists(table, chain):
                raise NetworkError("IptablesFailed", f"cannot create chain {table}/{chain}: {out.strip()}")

    async def ensure_rule(self, table: str, chain: str, rule: list[str], *, first: bool = False) -> None:
        code, _ = await self._run(table, "-C", chain, *rule)
        if code != 0:
            await self.check(table, "-I" if first else "-A", chain, *rule)

    async def delete_rule(self, table: str, chain: str, rule: list[str]) -> None:
        """Delete every copy of `rule`; a missing rule or chain is not an error."""
        for _ in range(64):
            code, _ = await self._run(table, "-D", chain, *rule)
            if code != 0:
                return

    async def rules(self, table: str, chain: str) -> list[list[str]]:
        """The rules of `chain` as argument lists (without the leading `-A CHAIN`)."""
        code, out = await self._run(table, "-S", chain)
        if code != 0:
            return []
        rules = []
        for line in out.splitlines():
            words = shlex.split(line)
            if len(words) > 2 and words[0] == "-A" and words[1] == chain:
                rules.append(words[2:])
        return rules

    async def delete_chain(self, table: str, chain: str) -> None:
        if await self.chain_exists(table, chain):
            await self._run(table, "-F", chain)
            await self._run(table, "-X", chain)
