"""Service settings: one pydantic-settings object, read from ``NEWARRIVALS_*`` variables.

Get them through :func:`get_settings` (cached) and FastAPI's ``Depends``; tests and the CLI
pass their own :class:`ServeSettings` to :func:`~newarrivals.service.api.app.create_app`,
which installs it as the override of :func:`get_settings`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.index.version import MANIFEST_FILE

__all__ = ["MIN_API_KEY_LENGTH", "ServeSettings", "get_settings"]

#: Shorter keys are refused: they can be guessed.
MIN_API_KEY_LENGTH = 16

_KEY_HOWTO = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ServeSettings(BaseSettings):
    """Everything the HTTP service reads at start-up (environment: ``NEWARRIVALS_<NAME>``).

    Example:
        >>> ServeSettings(index=Path("demo/index"), read_only=True).max_k
        100
    """

    model_config = SettingsConfigDict(env_prefix="NEWARRIVALS_", frozen=True, extra="forbid")

    index: Path = Field(
        default=Path("demo/index"),
        description="Index root (its LATEST version is served; reload swaps to the newest) "
        "or one version directory.",
    )
    catalog: Path | None = Field(
        default=None,
        description="Catalogue with product metadata and interactions; default: the one "
        "recorded in the index manifest.",
    )
    journal: Path | None = Field(
        default=None,
        description="SQLite journal of accepted writes; default <index root>/journal.sqlite.",
    )
    ranker: Path | None = Field(
        default=None, description="Ranker artifact directory; re-ranking needs one."
    )
    device: str = Field(default="cpu", description="Encoders' and ranker's device.")
    encoder_runtime: Literal["auto", "torch"] = Field(
        default="auto",
        description="auto: on the CPU, encode with the verified ONNX copies of the encoders "
        "kept in the index's embedding cache (as a CPU build does); torch: always torch.",
    )
    use_gpu_faiss: bool = Field(default=False, description="Search the product index on GPU.")
    verify_index: bool = Field(default=True, description="Check file hashes on load.")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads of the encoders' and ranker's forward passes (torch or ONNX "
        "Runtime; default: the library's choice).",
    )

    api_key: SecretStr | None = Field(
        default=None, description="Key for write and admin routes (X-API-Key header)."
    )
    api_key_file: Path | None = Field(
        default=None, description="File holding the key (first line), instead of api_key."
    )
    read_only: bool = Field(default=False, description="Serve no write or admin route.")
    require_key_for_reads: bool = Field(
        default=False, description="Read routes need the API key too."
    )

    max_k: int = Field(default=100, ge=1, le=10_000, description="Largest k a request may ask.")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Larger -> 413.")
    max_image_pixels: int = Field(default=25_000_000, ge=1, description="Larger photos -> 422.")
    max_events_per_request: int = Field(default=1000, ge=1)
    rerank_depth: int = Field(
        default=50, ge=1, le=1000, description="Candidates the ranker re-scores."
    )
    retrieval: Literal["mean", "late-max"] = Field(
        default="mean",
        description="First stage of user and session recommendations: 'mean' searches the "
        "index with the user's mean vector (ANN, the fastest); 'late-max' scores every product "
        "passing the filters by its photo and text similarity to the user's recent products, "
        "z-normalised per modality (the evaluation's fused-late/max: better on H&M, cost "
        "grows with the filtered set; needs a concat-fused index).",
    )
    recent_limit: int = Field(
        default=20, ge=1, le=200, description="Recent products kept per user (for reasons)."
    )
    audience_temperature: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="Softmax temperature of the cold-start audience probabilities.",
    )
    audience_max_k: int = Field(
        default=20, ge=1, le=200, description="Largest top-k a reach figure may use."
    )
    audience_max_users: int = Field(
        default=100, ge=1, le=10_000, description="Most users a cold-start lookup lists."
    )
    precompute_audience: bool = Field(
        default=True, description="Fill every user's top-k cache at load (not on first lookup)."
    )
    load_in_background: bool = Field(
        default=True,
        description="Start answering /healthz at once and load the index in a thread "
        "(/readyz says when it is done).",
    )

    @property
    def index_root(self) -> Path:
        """The folder versions are published under (the parent of a version directory)."""
        return self.index.parent if (self.index / MANIFEST_FILE).is_file() else self.index

    @property
    def journal_path(self) -> Path:
        return self.journal if self.journal is not None else self.index_root / "journal.sqlite"

    @property
    def writes_enabled(self) -> bool:
        return not self.read_only

    def resolved_api_key(self) -> str | None:
        """The API key from ``api_key`` or ``api_key_file``.

        Raises:
            ConfigError: when both are set, the file is unreadable or empty, or the key is
                too short.
        """
        if self.api_key is not None and self.api_key_file is not None:
            raise ConfigError(
                "both NEWARRIVALS_API_KEY and NEWARRIVALS_API_KEY_FILE are set; keep one."
            )
        key: str | None = None
        if self.api_key is not None:
            key = self.api_key.get_secret_value().strip()
        elif self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read the API key file {self.api_key_file}: {exc.strerror or exc}."
                ) from exc
            key = lines[0].strip() if lines else ""
        if key is not None and len(key) < MIN_API_KEY_LENGTH:
            raise ConfigError(
                f"the API key has {len(key)} characters; use at least {MIN_API_KEY_LENGTH} "
                f"random ones, e.g. {_KEY_HOWTO}."
            )
        return key

    def check_security(self) -> str | None:
        """Refuse to serve write/admin routes (or keyed reads) without a key.

        Returns:
            The API key (``None`` only when nothing needs one).

        Raises:
            ConfigError: saying which variable or flag to set.
        """
        key = self.resolved_api_key()
        if key is None and self.writes_enabled:
            raise ConfigError(
                "write and admin routes are enabled but no API key is set: set "
                "NEWARRIVALS_API_KEY (or NEWARRIVALS_API_KEY_FILE, or `newarrivals serve "
                f"--api-key-file PATH`) to a random key, e.g. {_KEY_HOWTO}; or serve read "
                "routes only with NEWARRIVALS_READ_ONLY=true (`--read-only`)."
            )
        if key is None and self.require_key_for_reads:
            raise ConfigError(
                "NEWARRIVALS_REQUIRE_KEY_FOR_READS is true but no API key is set; set "
                "NEWARRIVALS_API_KEY or NEWARRIVALS_API_KEY_FILE."
            )
        return key


@lru_cache
def get_settings() -> ServeSettings:
    """The settings from the environment, read once (override it in tests and the CLI)."""
    return ServeSettings()
