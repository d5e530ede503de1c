"""The command line: parses flags into a `RunSettings`, calls occystrap.library (or the
toolbox) and renders what it returns. The only module that imports click."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from occystrap import __version__, cancel
from occystrap.envvars import CONFIG_ENV, REGISTRIES_CONF_ENV
from occystrap.errors import OccystrapError, filesystem_error, is_network_error
from occystrap.middleware.defaults import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_DEADLINE,
    DEFAULT_READ_TIMEOUT,
    DEFERRED_HTTP2_MODULE,
    UNUSED_HTTP2_MODULE,
)

# Only what `--version` and `--help` need is imported up here: settings, httpx and the
# rest load when a command runs (docs/performance.md, "Start-up").
if TYPE_CHECKING:
    from occystrap.config_file import ConfigFile
    from occystrap.endpoints import Endpoint
    from occystrap.pipeline import CopyResult, ImageFilter, TransferStats
    from occystrap.progress import TerminalProgress
    from occystrap.registry.referrers import Referrer
    from occystrap.settings import RunSettings

# One "occystrap:" prefix per line; --debug also names the logger the line came from.
LOG_FORMAT = "occystrap: %(levelname)s: %(message)s"
DEBUG_LOG_FORMAT = "occystrap: %(levelname)s %(name)s: %(message)s"
QUIET = "occystrap.quiet"  # click context meta key: -q was given
PROGRESS = "occystrap.progress"  # click context meta key: the --progress mode
LOGIN_PASSWORD = "occystrap.login_password"  # a global --password meant for login -u
NO_MATCH_STATUS = 1  # search found nothing, as grep
CLOSED_PIPE_STATUS = 128 + 13  # stdout's reader went away (SIGPIPE), as grep


class OneLineErrors(click.Group):
    """Turns every expected failure, usage errors included, into one line and a non-zero exit."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if not args and "args" not in kwargs:  # run as the program: arguments from sys.argv
            _leave_out_async_backends()
        kwargs["standalone_mode"] = False
        self.cancellation = cancel.install_interrupt_handler()
        try:
            status = super().main(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help(), err=True)
            sys.exit(2)
        except click.UsageError as exc:
            _fail(f"{exc.format_message()} (see occystrap --help)", 2)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except (click.Abort, cancel.Cancelled):
            click.echo(f"occystrap: error: {cancel.stopped_message()}", err=True)
            cancel.exit_now(cancel.stopped_status())
        sys.exit(status if isinstance(status, int) else 0)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, self._global_options_first(args))

    def _global_options_first(self, args: list[str]) -> list[str]:
        """`occystrap info --insecure X` as `occystrap --insecure info X`: a global option
        given after the command (and not one of the command's own) moves before it."""
        takes_value = {
            name: not (option.is_flag or option.count)
            for option in self.params
            if isinstance(option, click.Option)
            for name in (*option.opts, *option.secondary_opts)
        }
        before: list[str] = []
        position = 0
        while position < len(args):  # the global options already before the command
            word = args[position]
            if not word.startswith("-") or word == "--":
                break
            before.append(word)
            position += 1
            if takes_value.get(word) and position < len(args):
                before.append(args[position])
                position += 1
        if position >= len(args) or args[position] not in self.commands:
            return args
        command = self.commands[args[position]]
        own = {
            name
            for param in command.params
            if isinstance(param, click.Option)
            for name in (*param.opts, *param.secondary_opts)
        }
        after: list[str] = [args[position]]
        words = args[position + 1 :]
        index = 0
        while index < len(words):
            word = words[index]
            if word == "--":
                after += words[index:]
                break
            name = word.partition("=")[0]
            if name in takes_value and name not in own:
                before.append(word)
                if takes_value[name] and "=" not in word and index + 1 < len(words):
                    index += 1
                    before.append(words[index])
            else:
                after.append(word)
            index += 1
        return before + after

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            if not _stdout_reader_gone():
                raise click.ClickException(str(filesystem_error(exc))) from None
            # Whoever read stdout went away (`search ... | head`): stop quietly, as grep
            # does. Later writes (and the flush at exit) must not fail again on the pipe.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(CLOSED_PIPE_STATUS) from None
        except OccystrapError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(str(filesystem_error(exc))) from None
        except Exception as exc:
            if not is_network_error(exc):
                raise
            from occystrap.registry.errors import network_error_message

            raise click.ClickException(network_error_message(exc)) from None


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll reports an error on its write
    end), so a broken pipe there is the reader leaving, not a failure of the run's own."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _cancellation() -> cancel.Cancellation:
    """The run this command started, which Ctrl-C and SIGTERM cancel."""
    root = click.get_current_context().find_root().command
    return root.cancellation if isinstance(root, OneLineErrors) else cancel.Cancellation()


# httpcore imports these, when installed, for its async API, which occystrap never uses:
# with trio installed that is about 100 ms of every command's start-up. Its HTTP/2 code
# (h2) waits for the first request over TLS with HTTP/2 on (middleware/defaults.py).
LEFT_OUT_MODULES = ("trio", "anyio", UNUSED_HTTP2_MODULE, DEFERRED_HTTP2_MODULE)


def _leave_out_async_backends() -> None:
    """Make httpcore find no async backend, and no HTTP/2 until it may be negotiated. Only in
    the occystrap program itself, whose process is ours: a library caller may well use
    them."""
    for name in LEFT_OUT_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def _fail(message: str, status: int) -> None:
    click.echo(f"occystrap: error: {' '.join(message.split())}", err=True)
    sys.exit(status)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="occystrap")
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    envvar=CONFIG_ENV,
    is_eager=True,
    callback=lambda ctx, _param, value: _read_config_file(ctx, value),
    metavar="FILE",
    help="Take option defaults from this TOML file (default:"
    " $XDG_CONFIG_HOME/occystrap/config.toml); see docs/configuration.md.",
)
@click.option(
    "--registries-conf",
    type=click.Path(dir_okay=False),
    envvar=REGISTRIES_CONF_ENV,
    metavar="FILE",
    help="Read this registries.conf (with the drop-ins) instead of the user's or"
    " /etc/containers/registries.conf.",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 100),
    default=3,
    show_default=True,
    envvar="OCCYSTRAP_RETRIES",
    help="Extra attempts per request, with backoff.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULT_READ_TIMEOUT,
    show_default=True,
    envvar="OCCYSTRAP_TIMEOUT",
    metavar="SECONDS",
    help="Longest silence from a server before the attempt is retried.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(0.1, 3600),
    default=DEFAULT_CONNECT_TIMEOUT,
    show_default=True,
    envvar="OCCYSTRAP_CONNECT_TIMEOUT",
    metavar="SECONDS",
    help="Longest wait for a connection (TCP and TLS).",
)
@click.option(
    "--deadline",
    type=click.FloatRange(1, 86400),
    default=DEFAULT_DEADLINE,
    show_default=True,
    envvar="OCCYSTRAP_DEADLINE",
    metavar="SECONDS",
    help="Most time one request may take, retries included; layers must move while streaming.",
)
@click.option(
    "--rate-limit",
    "rate_limits",
    multiple=True,
    metavar="R|HOST=R",
    envvar="OCCYSTRAP_RATE_LIMIT",
    help="Requests per second, overall or per host (repeatable).",
)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="SOURCE=URL",
    envvar="OCCYSTRAP_MIRRORS",
    help="Read SOURCE registry through the mirror at URL first (repeatable, in order).",
)
@click.option(
    "--middleware",
    "middlewares",
    multiple=True,
    metavar="NAME[:k=v,...]",
    envvar="OCCYSTRAP_MIDDLEWARE",
    help="Enable a middleware plug-in (repeatable).",
)
@click.option(
    "--quay-token",
    envvar="OCCYSTRAP_QUAY_TOKEN",
    metavar="TOKEN",
    help="OAuth token for the Quay API.",
)
@click.option(
    "--http2/--no-http2",
    default=True,
    envvar="OCCYSTRAP_HTTP2",
    show_default=True,
    help="Negotiate HTTP/2 with TLS registries.",
)
@click.option(
    "--ca-cert",
    type=click.Path(dir_okay=False),
    envvar="OCCYSTRAP_CA_CERT",
    help="Extra CA certificate (PEM) to trust.",
)
@click.option(
    "--insecure", is_flag=True, envvar="OCCYSTRAP_INSECURE", help="Talk plain HTTP to registries."
)
@click.option(
    "--tls-verify",
    type=click.BOOL,
    default=True,
    show_default=True,
    envvar="OCCYSTRAP_TLS_VERIFY",
    metavar="BOOL",
    help="Verify registries' TLS certificates (false: TLS without verification).",
)
@click.option(
    "--src-tls-verify",
    type=click.BOOL,
    default=True,
    show_default=True,
    envvar="OCCYSTRAP_SRC_TLS_VERIFY",
    metavar="BOOL",
    help="Verify the TLS certificate of a copy's source registry (false: as skopeo's).",
)
@click.option(
    "--dest-tls-verify",
    type=click.BOOL,
    default=True,
    show_default=True,
    envvar="OCCYSTRAP_DEST_TLS_VERIFY",
    metavar="BOOL",
    help="Verify the TLS certificate of a copy's destination registry.",
)
@click.option(
    "--src-cert-dir",
    type=click.Path(file_okay=False, exists=True),
    envvar="OCCYSTRAP_SRC_CERT_DIR",
    metavar="DIR",
    help="The source registry's certificate directory (ca.crt, client.cert, client.key),"
    " as skopeo's --src-cert-dir.",
)
@click.option(
    "--dest-cert-dir",
    type=click.Path(file_okay=False, exists=True),
    envvar="OCCYSTRAP_DEST_CERT_DIR",
    metavar="DIR",
    help="The destination registry's certificate directory, as skopeo's --dest-cert-dir.",
)
@click.option(
    "--certs-dir",
    "certs_dirs",
    multiple=True,
    type=click.Path(file_okay=False),
    envvar="OCCYSTRAP_CERTS_DIRS",
    metavar="ROOT",
    help="Look up HOST[:PORT]/ CA and client certificates under ROOT instead of the"
    " certs.d directories (repeatable, in order).",
)
@click.option(
    "--authfile",
    type=click.Path(dir_okay=False),
    envvar=["OCCYSTRAP_AUTHFILE", "REGISTRY_AUTH_FILE"],
    help="Read (and for login/logout, write) credentials in this file only.",
)
@click.option(
    "--src-creds",
    envvar="OCCYSTRAP_SRC_CREDS",
    metavar="USER:PASS",
    help="Credentials for the source registry of a copy.",
)
@click.option(
    "--dest-creds",
    envvar="OCCYSTRAP_DEST_CREDS",
    metavar="USER:PASS",
    help="Credentials for the destination registry of a copy.",
)
@click.option(
    "--username",
    envvar="OCCYSTRAP_USERNAME",
    help="Username for the registries this command names.",
)
@click.option(
    "--password",
    envvar="OCCYSTRAP_PASSWORD",
    help="Password or token for the registries this command names.",
)
@click.option(
    "--os",
    "os_name",
    default=None,
    envvar="OCCYSTRAP_OS",
    help="With --architecture/--variant, an alias of a command's --platform OS/ARCH/VARIANT"
    " (OS alone: linux).",
)
@click.option(
    "--architecture",
    default=None,
    envvar="OCCYSTRAP_ARCHITECTURE",
    help="Platform architecture, for the --platform alias (alone: amd64).",
)
@click.option(
    "--variant",
    default=None,
    envvar="OCCYSTRAP_VARIANT",
    help="Platform variant, for the --platform alias (e.g. v8).",
)
@click.option(
    "-j",
    "--parallel",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    envvar="OCCYSTRAP_PARALLEL",
    help="Layers moved at once.",
)
@click.option(
    "--compression",
    type=click.Choice(["gzip", "zstd"]),
    default="gzip",
    show_default=True,
    envvar="OCCYSTRAP_COMPRESSION",
    help="Compression for layers that must be (re)compressed.",
)
@click.option(
    "--compression-level",
    type=int,
    default=None,
    envvar="OCCYSTRAP_COMPRESSION_LEVEL",
    help="Level for --compression: gzip 0-3 with ISA-L (0-9 with zlib), zstd 1-22"
    " (default: gzip 1, zstd 3; see docs/performance.md).",
)
@click.option(
    "--dest-compress",
    type=click.Choice(["gzip", "zstd"]),
    default=None,
    envvar="OCCYSTRAP_DEST_COMPRESS",
    help="Recompress the layers a copy stores in another format as gzip or zstd: diff_ids"
    " stay, layer digests and the manifest are new (registry:// destinations).",
)
@click.option(
    "--dest-compress-level",
    type=int,
    default=None,
    envvar="OCCYSTRAP_DEST_COMPRESS_LEVEL",
    help="Level for --dest-compress (ranges as for --compression-level).",
)
@click.option(
    "--dest-compress-keep",
    is_flag=True,
    help="Keep every blob byte for byte, as stored (the default).",
)
@click.option(
    "--no-cache",
    is_flag=True,
    envvar="OCCYSTRAP_NO_CACHE",
    help="Neither read nor update the blob cache in $XDG_CACHE_HOME/occystrap.",
)
@click.option(
    "--force",
    is_flag=True,
    envvar="OCCYSTRAP_FORCE",
    help="Let a tar:// destination replace an existing file (as ?overwrite=true does).",
)
@click.option(
    "--temp-dir",
    type=click.Path(file_okay=False),
    envvar="OCCYSTRAP_TEMP_DIR",
    help="Where layers are staged (default: system temp dir).",
)
@click.option(
    "-O",
    "--output-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="OCCYSTRAP_OUTPUT_FORMAT",
)
@click.option(
    "-v", "--verbose", is_flag=True, envvar="OCCYSTRAP_VERBOSE", help="Say what each step does."
)
@click.option(
    "--progress",
    type=click.Choice(["auto", "tty", "plain", "none"]),
    default="auto",
    show_default=True,
    envvar="OCCYSTRAP_PROGRESS",
    help="auto: a live display on a terminal, plain lines elsewhere once a run lasts 5 s;"
    " tty: the display always; plain: a line per layer done and one overall line every 5 s,"
    " from the start; none.",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    envvar="OCCYSTRAP_QUIET",
    help="Print errors only: no warnings, progress or summary line.",
)
@click.option(
    "--debug",
    is_flag=True,
    envvar="OCCYSTRAP_DEBUG",
    help="Log every network attempt and show the middleware chain.",
)
@click.pass_context
def main(ctx: click.Context, **options: object) -> None:
    """Move container images between registries, tarballs and directories."""
    # The program starts without the collector (__main__.py). What start-up made lives as long
    # as the process: frozen, the collector's passes during the command skip it, so they cost
    # little, and a long listing or copy still has its garbage collected.
    gc.freeze()
    gc.enable()
    ctx.meta[QUIET] = options.pop("quiet")
    mode = options.pop("progress")
    ctx.meta[PROGRESS] = "none" if ctx.meta[QUIET] else mode
    if ctx.invoked_subcommand == "login" and options.get("username") is None:
        # `--password X login -u USER`: the user comes with the command, not globally.
        ctx.meta[LOGIN_PASSWORD] = options["password"]
        options["password"] = None
    level = (
        logging.DEBUG
        if options["debug"]
        else logging.INFO
        if options["verbose"]
        else logging.ERROR
        if ctx.meta[QUIET]
        else logging.WARNING
    )
    log_format = DEBUG_LOG_FORMAT if options["debug"] else LOG_FORMAT
    logging.basicConfig(level=level, format=log_format, stream=sys.stderr)
    # The HTTP libraries log whole URLs and headers; our Logging middleware logs each
    # attempt with secrets redacted instead.
    for library in ("httpx", "httpcore", "h2", "hpack"):
        logging.getLogger(library).setLevel(logging.WARNING)
    options["temp_dir"] = Path(str(options["temp_dir"])) if options["temp_dir"] else None
    from occystrap import registries_conf
    from occystrap.settings import RunSettings

    del options["config"]  # read before the other options, by _read_config_file
    named = options.pop("registries_conf")
    registries_conf.activate(lambda: registries_conf.load(Path(str(named)) if named else None))
    ctx.obj = RunSettings.from_options(options)


# -- the configuration file and `occystrap config` -------------------------------------------

_CONFIG_FILE = "occystrap.config_file"


def _option_key(param: click.Parameter) -> str | None:
    """An option's name in the config file: its long name without the dashes."""
    return next((opt[2:] for opt in param.opts if opt.startswith("--")), None)


def _read_config_file(ctx: click.Context, named: str | None) -> None:
    """--config, $OCCYSTRAP_CONFIG or the default file: its values become the global options'
    defaults, so the command line and the environment still win. Each value is checked
    against its option here, so a bad one is a line naming the file and the line."""
    from occystrap import config_file
    from occystrap.tomlfile import ConfigFileError

    if ctx.resilient_parsing:  # shell completion: no file needed, and no error wanted
        ctx.meta[_CONFIG_FILE] = config_file.ConfigFile()
        return
    try:
        loaded = config_file.load(Path(named) if named else None)
        options = {_option_key(param): param for param in ctx.command.params}
        defaults: dict[str, object] = {}
        for key, entry in loaded.values.items():
            param = options.get(key)
            if not isinstance(param, click.Option) or key == "config":
                raise ConfigFileError(
                    f"{loaded.where(key)}: unknown option {key!r}: the keys are the long names"
                    " of the global options (occystrap --help)"
                )
            defaults[str(param.name)] = _checked_value(ctx, param, key, entry.value, loaded)
    except ConfigFileError as exc:
        raise click.ClickException(str(exc)) from None
    ctx.default_map = defaults
    ctx.meta[_CONFIG_FILE] = loaded


def _checked_value(
    ctx: click.Context, param: click.Option, key: str, value: object, loaded: ConfigFile
) -> object:
    from occystrap.tomlfile import ConfigFileError

    where = loaded.where(key)
    if param.multiple:
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list):
            raise ConfigFileError(f"{where}: {key} takes a list (it may be repeated)")
    elif param.is_flag and not isinstance(value, bool):
        raise ConfigFileError(f"{where}: {key} takes true or false, not {value!r}")
    elif isinstance(value, (list, dict)):
        raise ConfigFileError(f"{where}: {key} takes one value, not {value!r}")
    try:
        param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise ConfigFileError(f"{where}: {key}: {exc.format_message()}") from None
    return value


def _source(root: click.Context, param: click.Parameter, key: str) -> str:
    """Where an option's value came from, for `occystrap config`."""
    source = root.get_parameter_source(str(param.name))
    if source is click.core.ParameterSource.COMMANDLINE:
        return "command line"
    if source is click.core.ParameterSource.ENVIRONMENT:
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
        return f"environment ({next((n for n in names if os.environ.get(n)), names[0])})"
    if source is click.core.ParameterSource.DEFAULT_MAP:
        return f"config file ({root.meta[_CONFIG_FILE].where(key)})"
    return "default"


def effective_configuration(ctx: click.Context) -> dict[str, Any]:
    """Every global option's value (secrets masked) and source, and the files read."""
    root = ctx.find_root()
    loaded: ConfigFile = root.meta[_CONFIG_FILE]
    from occystrap import config_file, registries_conf

    conf = registries_conf.active()
    options = {}
    for param in root.command.params:
        key = _option_key(param)
        if key is None or param.name not in root.params or key == "config":
            continue
        value = config_file.mask(key, root.params[param.name])
        if isinstance(value, tuple):
            value = list(value)
        options[key] = {"value": value, "source": _source(root, param, key)}
    return {
        "options": options,
        "config_file": str(loaded.path) if loaded.path else None,
        "registries_conf": [str(path) for path in conf.files],
        "registries": [
            {
                "prefix": entry.prefix,
                "location": entry.location,
                "insecure": entry.insecure,
                "blocked": entry.blocked,
                "mirrors": [
                    {"location": m.location, "insecure": m.insecure, "pull": m.pull_from_mirror}
                    for m in entry.mirrors
                ],
                "from": entry.origin,
            }
            for entry in conf.registries
        ],
        "unqualified_search_registries": list(conf.unqualified_search_registries),
        "aliases": len(conf.aliases),
    }


def _print_configuration(shown: dict[str, Any]) -> None:
    def text(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, list):
            return ", ".join(str(item) for item in value) or "-"
        return str(value)

    for key, entry in shown["options"].items():
        click.echo(f"{key:<20} {text(entry['value']):<30} {entry['source']}")
    click.echo(f"{'config file':<20} {text(shown['config_file'])}")
    click.echo(f"{'registries.conf':<20} {text(shown['registries_conf'])}")
    click.echo(f"{'search registries':<20} {text(shown['unqualified_search_registries'])}")
    click.echo(f"{'short-name aliases':<20} {shown['aliases']}")
    for entry in shown["registries"]:
        flags = [word for word in ("insecure", "blocked") if entry[word]]
        mirrors = [
            f"{m['location']}{' (insecure)' if m['insecure'] else ''}"
            f"{'' if m['pull'] == 'all' else ' (' + m['pull'] + ')'}"
            for m in entry["mirrors"]
        ]
        line = f"registry {entry['prefix']}"
        if entry["location"] != entry["prefix"]:
            line += f" -> {entry['location']}"
        if flags:
            line += f" [{', '.join(flags)}]"
        if mirrors:
            line += f"; mirrors {', '.join(mirrors)}"
        click.echo(f"{line}  ({entry['from']})")


class _UriFormsCommand(click.Command):
    """A command whose help ends with the URI forms, read from the endpoint registry (and,
    for `process`, the filters installed, built-ins and plug-ins)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from occystrap.endpoints import destination_forms, source_forms

        with formatter.section("Sources"):
            formatter.write_dl([(form, "") for form in source_forms()])
        if self.name == "process":
            from occystrap.filters import filter_kinds

            with formatter.section("Destinations"):
                formatter.write_dl([(form, "") for form in destination_forms()])
            with formatter.section("Filters (-f, applied in the order given)"):
                formatter.write_dl([(kind.form, kind.summary) for kind in filter_kinds().values()])


PLATFORM_OPTION = click.option(
    "--platform",
    "platforms",
    multiple=True,
    metavar="OS/ARCH[/VARIANT]",
    help="Select this platform of a multi-platform image (repeatable where several can be"
    " written: a narrowed index). Global --os/--architecture/--variant are its alias.",
)


@main.command(cls=_UriFormsCommand)
@click.argument("source")
@click.argument("destination")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="NAME[:k=v,...]",
    help="Filter applied between source and destination (repeatable); listed below.",
)
@PLATFORM_OPTION
@click.option(
    "-J",
    "--image-parallel",
    type=click.IntRange(1, 32),
    default=3,
    show_default=True,
    envvar="OCCYSTRAP_IMAGE_PARALLEL",
    help="Images moved at once when SOURCE is quay://.",
)
@click.option(
    "--referrers",
    is_flag=True,
    help="Also copy what refers to the image (signatures, SBOMs, attestations), recursively;"
    " registry://, oci-layout://, buckets and (to write) oci-archive:// only.",
)
@click.option(
    "--digestfile",
    type=click.Path(dir_okay=False),
    help="Write the digest of the manifest (or index) written to this file, as skopeo does.",
)
@click.pass_obj
def process(
    settings: RunSettings,
    source: str,
    destination: str,
    filters: tuple[str, ...],
    platforms: tuple[str, ...],
    image_parallel: int,
    referrers: bool,
    digestfile: str | None,
) -> None:
    """Copy the image(s) at SOURCE to DESTINATION.

    Between registries and OCI layouts every manifest, index and blob is copied byte for
    byte, whatever it is (images, attestations, signatures, SBOMs, charts). A multi-platform
    SOURCE is copied whole; one --platform copies that platform's manifest as it is, several
    a narrowed index. tar://, dir://, docker:// (a daemon), oci:// (a runtime bundle) and
    mounts:// (overlayfs layers) take the one --platform given, else linux/amd64.
    A quay:// SOURCE names many images; DESTINATION must then hold many:
    dir://PATH?unique_names=true or registry://HOST/PREFIX.
    """
    from occystrap import library
    from occystrap.endpoints import parse_uri
    from occystrap.progress import TerminalProgress

    settings = settings.selecting(platforms)
    parsed_filters: list[ImageFilter] = []
    if filters:  # the filter modules (and their plug-in scan) load only when -f names one
        from occystrap.filters import parse_filters

        parsed_filters = parse_filters(filters)
    source_uri, destination_uri = parse_uri(source), parse_uri(destination)
    if source_uri.holds_many_images:
        library.check_many_destination(destination_uri)
        progress = TerminalProgress(
            f"{source_uri.describe()} -> {destination_uri}", mode=_progress_mode()
        )
        with progress:
            bulk = library.copy_many(
                source,
                destination,
                settings,
                filters=parsed_filters,
                image_parallel=image_parallel,
                referrers=referrers,
                progress=progress,
                on_rate_wait=progress.rate_limited,
                cancellation=_cancellation(),
            )
        if not bulk.images:
            click.echo(f"occystrap: no image matches {bulk.source}", err=True)
            return
        for failed in bulk.failed:
            click.echo(f"occystrap: {failed.source} failed: {failed.error}", err=True)
        what = (
            f"{bulk.source} -> {bulk.destination}: {len(bulk.succeeded)} images ok,"
            f" {len(bulk.failed)} failed"
        )
        _summary(what, progress, bulk.stats, destination_uri.blobs_are)
        if bulk.failed:
            raise OccystrapError(
                f"{len(bulk.failed)} of {len(bulk.images)} images failed; see the lines above"
            )
        return
    progress = TerminalProgress(f"{source_uri} -> {destination_uri}", mode=_progress_mode())
    with progress:
        result = library.copy(
            source,
            destination,
            settings,
            filters=parsed_filters,
            platforms=settings.platforms,
            referrers=referrers,
            progress=progress,
            on_rate_wait=progress.rate_limited,
            cancellation=_cancellation(),
        )
    if digestfile is not None:
        if result.digest is None:
            raise OccystrapError(
                f"{destination_uri} stores no manifest, so there is no digest for --digestfile;"
                " write to a registry or an OCI layout"
            )
        Path(digestfile).write_text(result.digest)
    if settings.output_format == "json":
        click.echo(json.dumps(_result_document(source_uri, destination_uri, result, progress)))
    counted = _counted(result.layers, "platform" if result.is_index else "layer")
    what = f"{source_uri} -> {destination_uri}: {counted}"
    if referrers:
        what += f", {_counted(result.referrers, 'referrer')}"
    if result.digest:
        what += f", {result.digest}"
    _summary(what, progress, result.stats, destination_uri.blobs_are)


def _progress_mode() -> str:
    return str(click.get_current_context().meta.get(PROGRESS, "auto"))


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _result_document(
    source: Endpoint, destination: Endpoint, result: CopyResult, progress: TerminalProgress
) -> dict[str, Any]:
    """What `process -O json` prints on stdout, for scripts: the same keys whatever the
    destination, so a script reads `blobs.uploaded` alike from a registry or a layout copy
    (`blobs_are` says which word the summary line uses for that destination)."""
    stats = result.stats
    return {
        "source": str(source),
        "destination": str(destination),
        "digest": result.digest,
        "kind": "index" if result.is_index else "image",
        "layers": None if result.is_index else result.layers,
        "platforms": result.platforms,
        "referrers": result.referrers,
        "blobs": {
            "uploaded": stats.uploaded,
            "mounted": stats.mounted,
            "already_there": stats.skipped,
        },
        "bytes": {"downloaded": stats.bytes_downloaded, "uploaded": stats.bytes_uploaded},
        "blobs_are": destination.blobs_are,
        "retries": stats.retries,
        "seconds": round(progress.tally.elapsed(), 3),
    }


def _summary(what: str, progress: TerminalProgress, stats: TransferStats, sent: str) -> None:
    """The run's last line on stderr: what was written, what moved (`sent`: "uploaded" or
    "written", as the destination takes blobs), how long, how many retries."""
    from occystrap.units import human_bytes

    if click.get_current_context().meta.get(QUIET):
        return
    blobs = ""
    if stats.uploaded or stats.mounted or stats.skipped:
        blobs = (
            f", blobs {stats.uploaded} {sent}, {stats.mounted} mounted,"
            f" {stats.skipped} already there"
        )
    if stats.recompressed:
        blobs += f", {stats.recompressed} recompressed (new layer digests and manifest)"
    retries = stats.retries
    click.echo(
        f"occystrap: {what}{blobs}; {human_bytes(stats.bytes_downloaded)} downloaded,"
        f" {human_bytes(stats.bytes_uploaded)} {sent} in {progress.tally.elapsed():.1f} s,"
        f" {retries} {'retry' if retries == 1 else 'retries'}",
        err=True,
    )


@main.command(cls=_UriFormsCommand)
@click.argument("source")
@click.argument("pattern")
@click.option("--regex", is_flag=True, help="PATTERN is a regular expression, not a glob.")
@click.option(
    "--script-friendly",
    is_flag=True,
    help="Print one IMAGE:TAG:LAYER_DIGEST:PATH line per match.",
)
@PLATFORM_OPTION
@click.pass_obj
def search(
    settings: RunSettings,
    source: str,
    pattern: str,
    regex: bool,
    script_friendly: bool,
    platforms: tuple[str, ...],
) -> None:
    """List the paths in every layer of SOURCE that match PATTERN (nothing is written).

    PATTERN is a glob: * and ? stay within a directory, ** crosses directories; without a /
    it matches a name at any depth. Whiteouts are shown as deletions.
    """
    from occystrap import library

    def show(layer: library.LayerHits) -> None:
        _write_lines(layer.lines(script_friendly))

    result = library.search(
        source,
        pattern,
        settings.selecting(platforms),
        regex=regex,
        on_layer=show,
        cancellation=_cancellation(),
    )
    count, layers = result.count, result.layers
    images = f"{len(result.images)} images" if len(result.images) != 1 else result.images[0]
    click.echo(
        f"occystrap: {count} {'path matches' if count == 1 else 'paths match'} in {images}"
        f" ({layers} {'layer' if layers == 1 else 'layers'} searched)",
        err=True,
    )
    if not count:
        raise click.exceptions.Exit(NO_MATCH_STATUS)  # as grep: scripts can test for a match


def _write_lines(lines: Iterable[str]) -> None:
    """Lines on stdout, control characters escaped (a path or label cannot fake output or
    send escape sequences to the terminal); a reader that went away ends the run quietly
    (OneLineErrors.invoke)."""
    from occystrap.units import printable

    sys.stdout.write("".join(f"{printable(line)}\n" for line in lines))
    sys.stdout.flush()


@main.command(cls=_UriFormsCommand)
@click.argument("source")
@PLATFORM_OPTION
@click.pass_obj
def info(settings: RunSettings, source: str, platforms: tuple[str, ...]) -> None:
    """Print image metadata without downloading layers (every match, for quay://)."""
    from occystrap import library
    from occystrap.endpoints import parse_uri

    settings = settings.selecting(platforms)
    uri = parse_uri(source)
    found = library.inspect(source, settings, _cancellation())
    if settings.output_format == "json":
        documents = [image.as_json() for image in found]
        shown = documents if uri.holds_many_images else documents[0]
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
        return
    if not found:
        click.echo(f"no image matches {uri.describe()}")
    for index, image in enumerate(found):
        if index:
            sys.stdout.write("\n")
        _print_info(image.as_json())


def _print_info(details: dict) -> None:
    from occystrap.units import human_bytes

    platform = details.get("platform") or {}
    details = {**details, "platform": "/".join(v for v in platform.values() if v)}
    lines = []
    for key in (
        "image",
        "media_type",
        "platform",
        "manifest_digest",
        "index_digest",
        "config_digest",
        "created",
    ):
        if details.get(key):
            lines.append(f"{key + ':':<17}{details[key]}")
    for key in ("entrypoint", "cmd"):
        if details.get(key) is not None:
            lines.append(f"{key + ':':<17}{json.dumps(details[key])}")
    for name in details.get("env") or []:
        lines.append(f"{'env:':<17}{name}")
    for name, value in sorted((details.get("labels") or {}).items()):
        lines.append(f"{'label:':<17}{name}={value}")
    layers = details.get("layers", [])
    lines.append(f"layers ({len(layers)}):")
    for layer in layers:
        lines.append(
            f"  {layer['digest']}  {human_bytes(layer['size']):>9}  {layer['compression']:<5}"
            f"  diff_id {layer['diff_id']}"
        )
        if layer.get("created_by"):
            lines.append(f"      {str(layer['created_by'])[:160]}")
    _write_lines(lines)


# -- the registry toolbox -------------------------------------------------------------------


def _write_stdout(data: bytes) -> None:
    """Bytes exactly as they are (a manifest or config whose digest a script may check)."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@main.command()
@click.argument("repository")
@click.option(
    "-n",
    "--page-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Tags asked for per request (?n=); every page is fetched either way.",
)
@click.pass_obj
def tags(settings: RunSettings, repository: str, page_size: int | None) -> None:
    """List the tags of REPOSITORY (registry://HOST/NAME), one a line; -O json for a list."""
    from occystrap import toolbox

    found = toolbox.tags(settings, repository, page_size)
    for line in [json.dumps(found)] if settings.output_format == "json" else found:
        click.echo(line)


@main.command()
@click.argument("image")
@PLATFORM_OPTION
@click.pass_obj
def digest(settings: RunSettings, image: str, platforms: tuple[str, ...]) -> None:
    """Print the manifest digest of IMAGE (for a multi-platform image, the index's digest)."""
    from occystrap import toolbox

    click.echo(toolbox.digest(settings.selecting(platforms), image))


@main.command()
@click.argument("image")
@PLATFORM_OPTION
@click.pass_obj
def manifest(settings: RunSettings, image: str, platforms: tuple[str, ...]) -> None:
    """Write IMAGE's manifest to stdout, byte for byte as the registry serves it."""
    from occystrap import toolbox

    _write_stdout(toolbox.manifest(settings.selecting(platforms), image))


@main.command()
@click.argument("image", required=False)
@PLATFORM_OPTION
@click.pass_context
def config(ctx: click.Context, image: str | None, platforms: tuple[str, ...]) -> None:
    """Write IMAGE's config JSON to stdout (one platform's: --platform, else linux/amd64).

    Without IMAGE: print occystrap's effective configuration, each option's value and where
    it came from (command line, environment, config file, default), secrets masked, and the
    registries.conf files read.
    """
    settings: RunSettings = ctx.obj
    if image is None:
        shown = effective_configuration(ctx)
        if settings.output_format == "json":
            click.echo(json.dumps(shown, indent=2))
        else:
            _print_configuration(shown)
        return
    from occystrap import toolbox

    _write_stdout(toolbox.config(settings.selecting(platforms), image))


@main.command()
@click.argument("image")
@click.option(
    "--artifact-type",
    metavar="TYPE",
    help="List only referrers of this artifact type (their own referrers are all listed).",
)
@click.pass_obj
def referrers(settings: RunSettings, image: str, artifact_type: str | None) -> None:
    """List the tree of what refers to IMAGE: signatures, SBOMs, attestations, and what refers
    to those (found by the referrers API, the referrers tag schema and cosign's tags)."""
    from occystrap import toolbox

    tree = toolbox.referrers(settings, image, artifact_type)
    if settings.output_format == "json":
        click.echo(json.dumps(tree.to_json(), indent=2, sort_keys=True))
        return
    click.echo(f"{tree.name}@{tree.subject.digest}")
    for line in _tree_lines(tree.referrers, ""):
        click.echo(line)


def _tree_lines(referrers: Sequence[Referrer], indent: str) -> Iterator[str]:
    """`oras discover`-style branches: TYPE DIGEST (how it was found)."""
    for position, referrer in enumerate(referrers):
        last = position == len(referrers) - 1
        how = referrer.found_by + (f" {referrer.tag}" if referrer.tag else "")
        kind = referrer.descriptor.artifact_type or referrer.descriptor.media_type
        yield f"{indent}{'└── ' if last else '├── '}{kind} {referrer.digest} ({how})"
        yield from _tree_lines(referrer.referrers, indent + ("    " if last else "│   "))


@main.group()
def artifact() -> None:
    """Push files as an OCI artifact, or pull an artifact's files, as oras does."""


@artifact.command("push")
@click.argument("destination")
@click.argument("files", nargs=-1, required=True)
@click.option("--artifact-type", required=True, metavar="TYPE", help="The manifest's artifactType.")
@click.option(
    "--subject",
    metavar="IMAGE",
    help="The image this artifact refers to (a URI, tag or digest in the same repository).",
)
@click.option(
    "--annotation",
    "annotations",
    multiple=True,
    metavar="KEY=VALUE",
    help="A manifest annotation (repeatable).",
)
@click.pass_obj
def artifact_push(
    settings: RunSettings,
    destination: str,
    files: tuple[str, ...],
    artifact_type: str,
    subject: str | None,
    annotations: tuple[str, ...],
) -> None:
    """Push FILE[:MEDIATYPE]... as one artifact to DESTINATION (registry://, oci-layout://,
    a bucket), each file a blob titled by its name; prints the manifest digest."""
    from occystrap import artifacts

    pushed = artifacts.push_artifact(
        settings,
        destination,
        [artifacts.parse_file_argument(text) for text in files],
        artifact_type,
        subject,
        dict(artifacts.parse_annotation(text) for text in annotations),
    )
    click.echo(pushed.digest)
    refers = f", referring to {pushed.subject}" if pushed.subject else ""
    click.echo(f"occystrap: pushed {pushed.files} files to {destination}{refers}", err=True)


@artifact.command("pull")
@click.argument("source")
@click.argument("directory", type=click.Path(file_okay=False))
@click.pass_obj
def artifact_pull(settings: RunSettings, source: str, directory: str) -> None:
    """Write the files of the artifact SOURCE into DIRECTORY, each named by its title and
    verified; an existing file is never replaced."""
    from occystrap import artifacts

    pulled = artifacts.pull_artifact(settings, source, Path(directory))
    for path in pulled.files:
        click.echo(str(path))
    click.echo(
        f"occystrap: pulled {len(pulled.files)} files ({pulled.bytes} bytes) of {pulled.digest}",
        err=True,
    )


@main.command()
@click.argument("image")
@click.pass_obj
def delete(settings: RunSettings, image: str) -> None:
    """Delete the manifest IMAGE names (a tag is resolved to its digest first)."""
    from occystrap import toolbox

    click.echo(f"occystrap: deleted {toolbox.delete(settings, image)}", err=True)


@main.command()
@click.argument("host")
@click.option("-u", "--username", "login_username", help="Username (else --username or a prompt).")
@click.option(
    "-p",
    "--password",
    "login_password",
    help="Password (visible to other users: prefer --password-stdin or the prompt).",
)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
@click.pass_obj
def login(
    settings: RunSettings,
    host: str,
    login_username: str | None,
    login_password: str | None,
    password_stdin: bool,
) -> None:
    """Check credentials against registry HOST, then save them in the auth file.

    The auth file is --authfile, else $REGISTRY_AUTH_FILE, else docker's config.json.
    Without --password-stdin the password is prompted for (not echoed) on a terminal.
    """
    from occystrap import toolbox

    if login_password is not None and password_stdin:
        raise click.UsageError("give the password with -p or --password-stdin, not both")
    toolbox.login_target(host)  # a blocked registry is refused before a password is asked
    given = login_password or click.get_current_context().meta.get(LOGIN_PASSWORD)
    credential = toolbox.ask_credential(
        settings,
        login_username,
        password_stdin,
        lambda text, hide: str(click.prompt(text, hide_input=hide)),
        password=given,
    )
    path = toolbox.login(settings, host, credential)
    click.echo(f"occystrap: logged in to {host} as {credential.username} ({path})", err=True)


@main.command()
@click.argument("host")
@click.pass_obj
def logout(settings: RunSettings, host: str) -> None:
    """Remove registry HOST's credentials from the auth file."""
    from occystrap import toolbox

    path, removed = toolbox.logout(settings, host)
    what = "logged out of" if removed else "was not logged in to"
    click.echo(f"occystrap: {what} {host} ({path})", err=True)


# -- sync and the catalog -------------------------------------------------------------------


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option("--dest", metavar="URI", help="Destination of a skopeo sync file (registry://...).")
@click.option("--scoped", is_flag=True, help="Skopeo file: name targets DEST/HOST/REPOSITORY.")
@click.option("--dry-run", is_flag=True, help="Print the plan; copy nothing (-O json for JSON).")
@click.option(
    "--prune",
    is_flag=True,
    help="Delete target tags the source no longer has (never a manifest a tag that stays holds).",
)
@click.option("--keep-going", is_flag=True, help="Start further images after one fails.")
@click.option(
    "--report",
    type=click.Path(dir_okay=False),
    help="Write every image's result as JSON to this file.",
)
@click.option(
    "-J",
    "--image-parallel",
    type=click.IntRange(1, 64),
    default=3,
    show_default=True,
    envvar="OCCYSTRAP_IMAGE_PARALLEL",
    help="Images copied at once.",
)
@click.option(
    "--quota-floor",
    type=click.IntRange(0, 1_000_000),
    default=5,
    show_default=True,
    help="Start no image from a registry whose stated pull quota (RateLimit-Remaining) is"
    " down to this; report the rest deferred.",
)
@click.option(
    "--retry-budget",
    type=click.IntRange(0, 1_000_000),
    default=None,
    help="Retries allowed in all for the run; then it fails fast (default: only --retries"
    " per request).",
)
@click.option(
    "--cluster",
    metavar="tcp://HOST:PORT|local:N",
    envvar="OCCYSTRAP_CLUSTER",
    help="Copy each image as a task on this Dask cluster (local:N starts N worker"
    " processes); needs occystrap[dask].",
)
@click.pass_obj
def sync(
    settings: RunSettings,
    file: str,
    dest: str | None,
    scoped: bool,
    dry_run: bool,
    prune: bool,
    keep_going: bool,
    report: str | None,
    image_parallel: int,
    quota_floor: int,
    retry_budget: int | None,
    cluster: str | None,
) -> None:
    """Keep the repositories FILE names in step: plan, then copy only what differs.

    FILE is occystrap's sync YAML (a `sync:` list of source/target rules) or a skopeo sync
    YAML (with --dest). See docs/sync.md.
    """
    from occystrap.sync.engine import SyncOptions
    from occystrap.sync.report import run_sync_command

    run_sync_command(
        settings,
        Path(file),
        dest=dest,
        scoped=scoped,
        options=SyncOptions(
            dry_run, prune, keep_going, image_parallel, quota_floor, retry_budget, cluster
        ),
        report=Path(report) if report else None,
        cancellation=_cancellation(),
    )


@main.command()
@click.argument("registry")
@click.option("--glob", "pattern", metavar="GLOB", help="Only repositories matching GLOB.")
@click.option(
    "-n",
    "--page-size",
    type=click.IntRange(1, 100_000),
    default=None,
    help="Repositories asked for per request (?n=); every page is fetched either way.",
)
@click.pass_obj
def catalog(
    settings: RunSettings, registry: str, pattern: str | None, page_size: int | None
) -> None:
    """List the repositories of REGISTRY (registry://HOST[/PREFIX]), one a line; -O json."""
    from occystrap import toolbox

    found = toolbox.catalog(settings, registry, pattern, page_size)
    for line in [json.dumps(found)] if settings.output_format == "json" else found:
        click.echo(line)


@main.command()
@click.argument("image")
@click.pass_obj
def ratelimit(settings: RunSettings, image: str) -> None:
    """Print the pull quota IMAGE's registry states (limit, remaining, window), as a HEAD of
    its manifest (free on Docker Hub) answers it; -O json for JSON."""
    from occystrap import toolbox

    reading = toolbox.ratelimit(settings, image)
    if settings.output_format == "json":
        click.echo(json.dumps(reading))
        return
    if reading["remaining"] is None:
        click.echo(f"{reading['registry']} states no pull quota")
        return
    for key in ("registry", "limit", "remaining", "window"):
        value = "-" if reading[key] is None else str(reading[key])
        click.echo(f"{key}: {value}{' s' if key == 'window' and value != '-' else ''}")
