"""What the fetch-alone baselines do: read from a PDS what pdsScan reads, with the worker's own
client and byte caps, and nothing else."""

from __future__ import annotations

from services import outbound


async def get_repo(fetcher: outbound.Fetcher, pds_url: str, did: str) -> None:
    """One repo whole (getRepo), its bytes dropped."""
    got = await fetcher.fetch(
        f"{pds_url}/xrpc/com.atproto.sync.getRepo",
        params={"did": did},
        max_bytes=outbound.REPO_BYTES,
        deadline_s=60,
    )
    assert got.status == 200, got.status
