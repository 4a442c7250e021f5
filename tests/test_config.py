"""Environment settings and timeback.config.json, read as Timeback reads them (protocol §6)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from timeback_nb.config import (
    CONFIG_FILENAME,
    ResolvedCourse,
    Settings,
    TimebackConfig,
    check_endpoint,
    describe,
    find_config,
    load_config,
    no_config_error,
)
from timeback_nb.errors import ConfigError, ValidationError
from tests.schema import reference_example

SECRET = "s3cr3t-value-never-shown"
CREDS = {"TIMEBACK_CLIENT_ID": "client-1", "TIMEBACK_CLIENT_SECRET": SECRET}


def write(folder: Path, config: Any, name: str = CONFIG_FILENAME) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(config if isinstance(config, str) else json.dumps(config, indent=2), encoding="utf-8")
    return path


def load(tmp_path: Path, config: Any, env: str | None = None) -> TimebackConfig:
    return load_config(write(tmp_path, config), env)


def reference_config() -> dict[str, Any]:
    return reference_example('"courses"')


# --- Settings -----------------------------------------------------------------------------------


def test_settings_defaults_are_staging_local_beyond_ai(tmp_path: Path) -> None:
    s = Settings.from_env({})
    assert s.env == "staging" and s.transport == "local" and not s.has_credentials
    assert s.caliper_url == "https://caliper.staging.alpha-1edtech.ai/caliper/event"
    assert s.auth_url == "https://staging-beyond-timeback-api-2-idp.auth.us-east-1.amazoncognito.com/oauth2/token"
    assert s.oneroster_url == "https://api.staging.alpha-1edtech.ai"
    assert s.store_path.name == "timeback.sqlite3" and s.store_path.parent.name == "timeback-nb"
    assert s.config_path is None and s.user_email is None and s.user_id is None


def test_settings_production_and_local_env() -> None:
    prod = Settings.from_env({"TIMEBACK_ENV": "production"})
    assert prod.caliper_url == "https://caliper.alpha-1edtech.ai/caliper/event"
    assert prod.auth_url == "https://prod-beyond-timeback-api-2-idp.auth.us-east-1.amazoncognito.com/oauth2/token"
    assert prod.oneroster_url == "https://api.alpha-1edtech.ai"
    local = Settings.from_env({"TIMEBACK_ENV": "local"})
    assert local.env == "staging" and local.caliper_url == Settings.from_env({}).caliper_url
    assert Settings.from_env({"TIMEBACK_ENV": " Production "}).env == "production"
    assert Settings.from_env({"TIMEBACK_ENV": ""}).env == "staging"  # empty counts as unset


def test_settings_reads_every_variable(tmp_path: Path) -> None:
    s = Settings.from_env(
        {
            **CREDS,
            "TIMEBACK_ENV": "production",
            "TIMEBACK_AUTH_URL": "https://auth.example.org/token",
            "TIMEBACK_CALIPER_URL": "https://caliper.example.org/caliper/event",
            "TIMEBACK_ONEROSTER_URL": "https://roster.example.org/",
            "TIMEBACK_USER_EMAIL": "student@example.edu",
            "TIMEBACK_USER_ID": "u-123",
            "TIMEBACK_NB_STORE": str(tmp_path / "store.sqlite3"),
            "TIMEBACK_CONFIG": str(tmp_path / "c.json"),
        }
    )
    assert s.has_credentials and s.transport == "caliper"
    assert (s.client_id, s.client_secret) == ("client-1", SECRET)
    assert s.auth_url == "https://auth.example.org/token"
    assert s.caliper_url == "https://caliper.example.org/caliper/event"
    assert s.oneroster_url == "https://roster.example.org"
    assert (s.user_email, s.user_id) == ("student@example.edu", "u-123")
    assert s.store_path == tmp_path / "store.sqlite3" and s.config_path == tmp_path / "c.json"


@pytest.mark.bad_input
def test_settings_env_is_refused_naming_variable_and_values() -> None:
    with pytest.raises(ConfigError, match=r"TIMEBACK_ENV: 'prod' .*staging, production, local"):
        Settings.from_env({"TIMEBACK_ENV": "prod"})


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"TIMEBACK_NB_TRANSPORT": "http"}, r"TIMEBACK_NB_TRANSPORT: 'http' .*local, caliper"),
        ({"TIMEBACK_NB_TRANSPORT": "caliper"}, r"TIMEBACK_CLIENT_ID and TIMEBACK_CLIENT_SECRET not set"),
        ({"TIMEBACK_NB_TRANSPORT": "caliper", "TIMEBACK_CLIENT_ID": "c"}, r"needs credentials: TIMEBACK_CLIENT_SECRET not set"),
        ({"TIMEBACK_CLIENT_SECRET": SECRET}, r"^TIMEBACK_CLIENT_ID: not set .*TIMEBACK_NB_TRANSPORT=local"),
        ({"TIMEBACK_CLIENT_ID": "c", "TIMEBACK_CLIENT_SECRET": "  "}, r"^TIMEBACK_CLIENT_SECRET: not set"),
        ({"TIMEBACK_USER_EMAIL": "student"}, r"^TIMEBACK_USER_EMAIL: expected an email"),
    ],
)
@pytest.mark.bad_input
def test_settings_transport_and_credentials_rules(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        Settings.from_env(environ)
    assert SECRET not in str(caught.value)


def test_explicit_local_transport_with_credentials() -> None:
    assert Settings.from_env({**CREDS, "TIMEBACK_NB_TRANSPORT": "LOCAL"}).transport == "local"
    assert Settings.from_env({"TIMEBACK_CLIENT_ID": "c", "TIMEBACK_NB_TRANSPORT": "local"}).transport == "local"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/caliper/event",
        "http://127.8.9.10/x",
        "http://localhost:9000/x",
        "http://LOCALHOST/x",
        "http://[::1]:9000/x",
        "https://caliper.example.org/caliper/event",
    ],
)
def test_endpoints_allowed(url: str) -> None:
    s = Settings.from_env({"TIMEBACK_CALIPER_URL": url, "TIMEBACK_AUTH_URL": url, "TIMEBACK_ONEROSTER_URL": url})
    assert s.caliper_url == url and s.auth_url == url


@pytest.mark.parametrize("variable", ["TIMEBACK_CALIPER_URL", "TIMEBACK_AUTH_URL", "TIMEBACK_ONEROSTER_URL"])
@pytest.mark.parametrize(
    "url, why",
    [
        ("http://caliper.example.org/caliper/event", "must use https"),
        ("http://128.0.0.1/x", "must use https"),
        ("http://localhost.example.org/x", "must use https"),
        ("http://[::2]/x", "must use https"),
        ("ftp://caliper.example.org/x", "absolute http"),
        ("caliper.example.org/caliper/event", "absolute http"),
        ("https://", "absolute http"),
        ("http://[::1/x", "absolute http"),
    ],
)
@pytest.mark.bad_input
def test_endpoints_refused_naming_the_variable(variable: str, url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{variable}: .*{why}") as caught:
        Settings.from_env({variable: url})
    assert caught.value.field == variable


@pytest.mark.bad_input
def test_credentials_in_an_endpoint_url_are_refused_and_not_echoed() -> None:
    url = f"https://client-1:{SECRET}@caliper.example.org/caliper/event"
    with pytest.raises(ConfigError, match=r"^TIMEBACK_CALIPER_URL: credentials do not belong") as caught:
        Settings.from_env({"TIMEBACK_CALIPER_URL": url})
    assert SECRET not in str(caught.value)
    assert check_endpoint(" https://caliper.example.org/x ", "f") == "https://caliper.example.org/x"
    for empty in ("", "  ", None):
        with pytest.raises(ConfigError, match=r"^transport\.url: an endpoint URL is required"):
            check_endpoint(empty, "transport.url")


def test_secret_never_in_repr_str_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    s = Settings.from_env(CREDS)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr([s])):
        assert SECRET not in text
        assert "client_secret=<set>" in text
    assert "client_secret=<unset>" in repr(Settings.from_env({}))
    assert repr(s).startswith("Settings(env='staging', client_id='client-1', client_secret=<set>, ")
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("timeback_nb.test").info("settings: %s %r", s, s)
    assert SECRET not in caplog.text


# --- find_config --------------------------------------------------------------------------------


def test_find_config_precedence(tmp_path: Path) -> None:
    project = tmp_path / "course"
    nested = project / "week1" / "notebooks"
    nested.mkdir(parents=True)
    in_parent = write(project, {"courses": []})
    explicit = write(tmp_path / "elsewhere", {"courses": []}, "mine.json")
    from_env = write(tmp_path / "env", {"courses": []})

    assert find_config(cwd=nested, environ={}) == in_parent
    assert find_config(environ={"TIMEBACK_CONFIG": str(from_env)}, cwd=nested) == from_env
    assert find_config(explicit, environ={"TIMEBACK_CONFIG": str(from_env)}, cwd=nested) == explicit
    assert find_config(str(explicit), environ={}, cwd=nested) == explicit
    # A directory stands for the config file inside it.
    assert find_config(tmp_path / "env", environ={}, cwd=nested) == from_env
    assert find_config(environ={"TIMEBACK_CONFIG": ""}, cwd=nested) == in_parent
    # Nearest wins.
    closer = write(nested, {"courses": []})
    assert find_config(cwd=nested, environ={}) == closer


@pytest.mark.bad_input
def test_find_config_none_and_missing_paths(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_config(cwd=empty, environ={}) in (None, *[p / CONFIG_FILENAME for p in empty.parents])
    with pytest.raises(ConfigError, match=r"^config: no config file at .*nope\.json"):
        find_config(tmp_path / "nope.json", environ={}, cwd=empty)
    with pytest.raises(ConfigError, match=r"^TIMEBACK_CONFIG: no config file at .*gone\.json"):
        find_config(environ={"TIMEBACK_CONFIG": str(tmp_path / "gone.json")}, cwd=empty)
    message = str(no_config_error(empty))
    assert str(empty) in message and "config=" in message and "TIMEBACK_CONFIG" in message


# --- load_config --------------------------------------------------------------------------------


@pytest.mark.bad_input
def test_json_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "name": "x",\n  "courses": [\n    {"subject": "Math", "grade": 8,}\n  ]\n}\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert "line 4 column 36" in str(caught.value)


@pytest.mark.parametrize(
    "config, where",
    [
        ([], "(top level)"),
        ({"courses": {"subject": "Math"}}, "courses"),
        ({"sensor": "https://x.org", "courses": ["Math"]}, "courses[0]"),
        ({"name": 3, "courses": []}, "name"),
        ({"sensor": 5, "courses": []}, "sensor"),
        ({"sensor": "https://x.org", "courses": [{"courseCode": 101}]}, "courses[0].courseCode"),
        ({"sensor": "https://x.org", "courses": [{"courseCode": "A", "ids": ["x"]}]}, "courses[0].ids"),
        ({"sensor": "https://x.org", "courses": [{"courseCode": "A", "ids": {"staging": 12}}]}, "courses[0].ids.staging"),
        ({"sensor": "https://x.org", "courses": [{"courseCode": "A", "overrides": {"staging": 1}}]}, "courses[0].overrides.staging"),
    ],
)
@pytest.mark.bad_input
def test_wrong_types_name_the_json_path(tmp_path: Path, config: Any, where: str) -> None:
    with pytest.raises(ConfigError, match=rf": {re.escape(where)}: expected"):
        load(tmp_path, config)


@pytest.mark.parametrize(
    "config, where",
    [
        ({"sensor": "not a url", "courses": []}, "sensor"),
        ({"courses": [{"courseCode": "A", "sensor": "notebooks.example.org"}]}, "courses[0].sensor"),
        (
            {"sensor": "https://x.org", "courses": [{"courseCode": "A"}, {"courseCode": "B", "sensor": "/lab"}]},
            "courses[1].sensor",
        ),
        (
            {"sensor": "https://x.org", "courses": [{"courseCode": "A", "overrides": {"production": {"sensor": "x y"}}}]},
            "courses[0].overrides.production.sensor",
        ),
    ],
)
@pytest.mark.bad_input
def test_sensors_must_be_absolute_urls(tmp_path: Path, config: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match=rf": {re.escape(where)}: .* is not an absolute URL") as caught:
        load(tmp_path, config)
    assert caught.value.field == where


@pytest.mark.bad_input
def test_sensor_with_surrounding_whitespace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"courses\[0\]\.sensor: remove the surrounding whitespace"):
        load(tmp_path, {"courses": [{"courseCode": "A", "sensor": "https://x.org "}]})


@pytest.mark.bad_input
def test_startup_validation_names_the_course(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"courses\[0\] \(Math\): needs a \"grade\" or a \"courseCode\""):
        load(tmp_path, {"sensor": "https://x.org", "courses": [{"subject": "Math"}]})
    with pytest.raises(ConfigError, match=r"courses\[1\] repeats Math grade 8 of courses\[0\]"):
        load(tmp_path, {"sensor": "https://x.org", "courses": [{"subject": "Math", "grade": 8}, {"subject": "Math", "grade": 8, "courseCode": "M8"}]})
    with pytest.raises(ConfigError, match=r"courses\[1\] repeats courseCode 'DS-101' of courses\[0\]"):
        load(tmp_path, {"sensor": "https://x.org", "courses": [{"courseCode": "DS-101"}, {"courseCode": "DS-101", "subject": "Science"}]})
    with pytest.raises(ConfigError, match=r"course DS-101 \(courses\[0\]\) has no sensor for staging; .*launchUrl"):
        load(tmp_path, {"courses": [{"courseCode": "DS-101"}]})
    with pytest.raises(ConfigError, match=r"course Math grade 3 \(courses\[0\]\) has no sensor"):
        load(tmp_path, {"courses": [{"subject": "Math", "grade": 3}]})


@pytest.mark.bad_input
def test_snake_case_is_ignored_at_top_and_course_level(tmp_path: Path) -> None:
    # course_code alone is not read, so the course has no identity: start-up fails as in Timeback.
    with pytest.raises(ConfigError, match=r"needs a \"grade\" or a \"courseCode\" \(snake_case"):
        load(tmp_path, {"sensor": "https://x.org", "courses": [{"course_code": "DS-101"}]})
    # launch_url is not read at top or course level, so it gives no sensor.
    with pytest.raises(ConfigError, match="has no sensor"):
        load(tmp_path, {"launch_url": "https://x.org/lab", "courses": [{"courseCode": "A"}]})
    with pytest.raises(ConfigError, match="has no sensor"):
        load(tmp_path, {"courses": [{"courseCode": "A", "launch_url": "https://x.org/lab"}]})
    config = load(tmp_path, {"launchUrl": "https://x.org/lab", "courses": [{"courseCode": "A", "ids": {"staging": "s"}, "launch_url": "https://y.org"}]})
    assert config.resolve({"code": "A"}, "staging").sensor == "https://x.org"


@pytest.mark.bad_input
def test_empty_config_has_no_courses(tmp_path: Path) -> None:
    config = load(tmp_path, {})
    assert config.courses == () and config.name == "Timeback App"
    with pytest.raises(ConfigError, match=r"^course: required because .* has 0 courses"):
        config.resolve(None, "staging")


# --- sensor precedence (§6.6) and overrides (§6.4) ----------------------------------------------


def test_sensor_precedence_worked_example(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "launchUrl": "https://nb.example.org/launch?x=1",
            "courses": [
                {
                    "subject": "Math",
                    "grade": 8,
                    "ids": {"staging": "s", "production": "p"},
                    "overrides": {"staging": {"sensor": "https://staging.nb.example.org"}},
                }
            ],
        },
    )
    math8 = {"subject": "Math", "grade": 8}
    assert config.resolve(math8, "staging").sensor == "https://staging.nb.example.org"
    assert config.resolve(math8, "local").sensor == "https://staging.nb.example.org"
    assert config.resolve(math8, "production").sensor == "https://nb.example.org"


@pytest.mark.parametrize(
    "top, course, staging_override, expected",
    [
        ({"sensor": "https://top.org", "launchUrl": "https://launch.org/x"}, {"sensor": "https://course.org"}, {"sensor": "https://ov.org"}, "https://ov.org"),
        ({"sensor": "https://top.org"}, {"sensor": "https://course.org"}, {}, "https://course.org"),
        ({"sensor": "https://top.org"}, {"sensor": "https://course.org"}, {"sensor": ""}, "https://course.org"),
        ({"sensor": "https://top.org", "launchUrl": "https://launch.org/x"}, {"launchUrl": "https://c-launch.org/y"}, {}, "https://top.org"),
        ({"launchUrl": "https://launch.org/x"}, {"launchUrl": "https://user:pw@c-launch.org:8443/y?z#f"}, {}, "https://c-launch.org:8443"),
        ({"launchUrl": "https://launch.org/x"}, {"launchUrl": "https://c-launch.org/y"}, {"launchUrl": "https://ov-launch.org/z"}, "https://ov-launch.org"),
        ({"launchUrl": "https://launch.org/x"}, {}, {"launchUrl": "https://camel.org/z", "launch_url": "https://snake.org/z"}, "https://snake.org"),
        ({"launchUrl": "https://launch.org/x"}, {}, {"launch_url": "https://snake.org/z"}, "https://snake.org"),
        ({"launchUrl": "https://launch.org/x"}, {}, {}, "https://launch.org"),
    ],
)
def test_sensor_precedence(tmp_path: Path, top: dict, course: dict, staging_override: dict, expected: str) -> None:
    entry = {"courseCode": "A", "ids": {"staging": "s"}, **course, "overrides": {"staging": staging_override}}
    config = load(tmp_path, {**top, "courses": [entry]}, env="staging")
    assert config.resolve({"code": "A"}, "staging").sensor == expected


@pytest.mark.bad_input
def test_unparsable_course_launch_url_gives_no_sensor(tmp_path: Path) -> None:
    # It has no origin, and it shadows the top-level launch URL (§6.6 takes the course's first).
    with pytest.raises(ConfigError, match="has no sensor for staging"):
        load(tmp_path, {"launchUrl": "https://launch.org/x", "courses": [{"courseCode": "A", "launchUrl": "not a url"}]})


def test_overrides_apply_only_to_their_env_and_only_when_truthy(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "sensor": "https://x.org",
            "courses": [
                {
                    "courseCode": "A",
                    "level": "base",
                    "ids": {"staging": "s", "production": "p"},
                    "metadata": {"goals": {"daily": 10, "weekly": 50}, "metrics": {"totalLessons": 20, "totalXp": 500}, "tag": "t"},
                    "overrides": {
                        "staging": {
                            "level": "",
                            "metadata": {"goals": {"daily": 5}, "metrics": {"totalLessons": 5}, "extra": 1},
                        },
                        "production": {"level": "prod"},
                    },
                }
            ],
        },
    )
    course = config.courses[0]
    staging = course.for_env("staging")
    assert staging.level == "base"  # empty override does not replace
    assert staging.metadata == {"goals": {"daily": 5, "weekly": 50}, "metrics": {"totalLessons": 5}, "tag": "t", "extra": 1}
    assert course.for_env("production").level == "prod"
    assert course.for_env("production").metadata == course.metadata
    assert config.resolve({"code": "A"}, "staging").total_lessons == 5
    assert config.resolve({"code": "A"}, "production").total_lessons == 20
    assert course.metadata["metrics"] == {"totalLessons": 20, "totalXp": 500}  # base untouched


def test_identity_and_ids_cannot_be_overridden(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        {
            "sensor": "https://x.org",
            "courses": [
                {
                    "subject": "Math",
                    "grade": 8,
                    "ids": {"staging": "s"},
                    "overrides": {"staging": {"subject": "Science", "grade": 9, "courseCode": "Z", "ids": {"staging": "other"}}},
                }
            ],
        },
    )
    resolved = config.resolve({"subject": "Math", "grade": 8}, "staging")
    assert (resolved.subject, resolved.grade, resolved.code, resolved.course_id) == ("Math", 8, None, "s")


# --- resolve (§6.8) -----------------------------------------------------------------------------


def test_resolve_the_reference_config(tmp_path: Path) -> None:
    config = load(tmp_path, reference_config())
    assert config.name == "Course Notebooks"
    math = config.resolve({"subject": "Math", "grade": 8}, "staging")
    assert math == ResolvedCourse(
        selector={"subject": "Math", "grade": 8},
        subject="Math",
        grade=8,
        code=None,
        course_id="c-stg-1",
        course_name="Math G8",
        sensor="https://staging.notebooks.example.org",
        app_name="Course Notebooks",
        total_lessons=20,
    )
    ds = config.resolve({"code": " DS-101 "}, "local")
    assert (ds.selector, ds.subject, ds.course_name, ds.course_id, ds.sensor, ds.total_lessons) == (
        {"code": "DS-101"},
        "Other",
        "DS-101",
        "c-stg-2",
        "https://notebooks.example.org",
        None,
    )


@pytest.mark.bad_input
def test_missing_synced_id_gives_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, reference_config())
    config = load_config(path)
    with pytest.raises(ConfigError) as caught:
        config.resolve({"code": "DS-101"}, "production")
    message = str(caught.value)
    assert "DS-101" in message and "production" in message and str(path) in message
    assert '"ids": {"production": "<sourcedId>"}' in message
    assert "TIMEBACK_ENV=staging" in message
    # No hint to switch when the other env is not synced either.
    config = load(tmp_path, {"sensor": "https://x.org", "courses": [{"courseCode": "A"}]})
    with pytest.raises(ConfigError, match=r'add "ids": \{"staging": "<sourcedId>"\}') as caught:
        config.resolve(None, "staging")
    assert "TIMEBACK_ENV" not in str(caught.value)


@pytest.mark.bad_input
def test_unknown_course_lists_the_configured_ones(tmp_path: Path) -> None:
    config = load(tmp_path, reference_config())
    with pytest.raises(ConfigError) as caught:
        config.resolve({"subject": "Math", "grade": 9}, "staging")
    message = str(caught.value)
    assert message.startswith("course: no course in ") and caught.value.field == "course"
    assert '{"subject": "Math", "grade": 8}' in message and '{"code": "DS-101"}' in message
    # Subject matching is exact and case-sensitive; the selector is validated first.
    with pytest.raises(ConfigError, match="no course"):
        config.resolve({"code": "ds-101"}, "staging")
    with pytest.raises(ValidationError, match=r"^course\.subject: "):
        config.resolve({"subject": "math", "grade": 8}, "staging")


@pytest.mark.bad_input
def test_string_grade_never_matches_and_says_why(tmp_path: Path) -> None:
    config = load(tmp_path, {"sensor": "https://x.org", "courses": [{"subject": "Math", "grade": "8", "ids": {"staging": "s"}}]})
    with pytest.raises(ConfigError, match=r"courses\[0\]\.grade is a string"):
        config.resolve({"subject": "Math", "grade": 8}, "staging")


@pytest.mark.bad_input
def test_none_selector_needs_exactly_one_course(tmp_path: Path) -> None:
    config = load(tmp_path, reference_config())
    with pytest.raises(ConfigError, match=r"^course: required because .* has 2 courses") as caught:
        config.resolve(None, "staging")
    assert caught.value.field == "course"
    single = load(tmp_path, {"sensor": "https://x.org", "courses": [{"subject": "Science", "grade": 5, "courseCode": "SCI-5", "ids": {"staging": "s"}}]})
    assert single.resolve(None, "staging").selector == {"subject": "Science", "grade": 5}
    assert single.resolve(None, "staging").course_name == "SCI-5"  # courseCode names the course
    # A subject outside the request list is reached by code, as an SDK client would.
    lang = load(tmp_path, {"sensor": "https://x.org", "courses": [{"subject": "Language", "grade": 3, "courseCode": "L3", "ids": {"staging": "s"}}]})
    assert lang.resolve(None, "staging").selector == {"code": "L3"}


@pytest.mark.bad_input
def test_ambiguous_selector_is_refused() -> None:
    # Load-time checks make this unreachable from a file; the resolver still refuses it.
    from timeback_nb.config import CourseConfig

    def course(index: int) -> CourseConfig:
        return CourseConfig(index, "Math", 8, None, None, {"staging": "s"}, None, None, {}, {})

    config = TimebackConfig(Path("t.json"), "App", "https://x.org", None, (course(0), course(1)))
    with pytest.raises(ConfigError, match=r"matches several courses in t\.json: courses\[0\] .*courses\[1\]"):
        config.resolve({"subject": "Math", "grade": 8}, "staging")


@pytest.mark.bad_input
def test_config_subject_must_be_a_caliper_subject(tmp_path: Path) -> None:
    config = load(tmp_path, {"sensor": "https://x.org", "courses": [{"subject": "Maths", "courseCode": "M", "ids": {"staging": "s"}}]})
    with pytest.raises(ConfigError, match=r"courses\[0\]\.subject: 'Maths' .*FastMath") as caught:
        config.resolve({"code": "M"}, "staging")
    assert caught.value.field == "courses[0].subject"
    # A missing subject becomes Other, which is allowed.
    config = load(tmp_path, {"sensor": "https://x.org", "courses": [{"courseCode": "M", "ids": {"staging": "s"}}]})
    resolved = config.resolve({"code": "M"}, "staging")
    assert resolved.subject == "Other" and resolved.course_name == "M"


def test_course_name_fallbacks(tmp_path: Path) -> None:
    config = load(tmp_path, {"sensor": "https://x.org", "courses": [{"subject": "Reading", "grade": 0, "ids": {"staging": "s"}}]})
    assert config.resolve(None, "staging").course_name == "Reading G0"


@pytest.mark.bad_input
def test_resolve_env_is_checked(tmp_path: Path) -> None:
    config = load(tmp_path, reference_config())
    with pytest.raises(ConfigError, match=r"^env: 'dev' .*staging, production, local"):
        config.resolve({"code": "DS-101"}, "dev")


@pytest.mark.bad_input
def test_load_for_one_env_checks_sensors_for_that_env_only(tmp_path: Path) -> None:
    staging_only = {"courses": [{"courseCode": "A", "ids": {"staging": "s"}, "overrides": {"staging": {"sensor": "https://stg.org"}}}]}
    assert load(tmp_path, staging_only, env="local").resolve(None, "staging").sensor == "https://stg.org"
    with pytest.raises(ConfigError, match="has no sensor for production"):
        load(tmp_path, staging_only)
    with pytest.raises(ConfigError, match="has no sensor for production"):
        load(tmp_path, staging_only, env="production")


# --- describe -----------------------------------------------------------------------------------


def test_describe_reports_each_course_and_env_without_secrets(tmp_path: Path) -> None:
    config = load(tmp_path, reference_config())
    settings = Settings.from_env({**CREDS, "TIMEBACK_ENV": "production"})
    rows = describe(config, settings)
    assert [(r["course"], r["env"], r["active"]) for r in rows] == [
        ("Math grade 8", "staging", False),
        ("Math grade 8", "production", True),
        ("DS-101", "staging", False),
        ("DS-101", "production", True),
    ]
    by_key = {(r["course"], r["env"]): r for r in rows}
    assert by_key["Math grade 8", "staging"]["sensor"] == "https://staging.notebooks.example.org"
    assert by_key["Math grade 8", "staging"]["object_id_prefix"] == "https://staging.notebooks.example.org/activities/Math/g8/"
    assert by_key["Math grade 8", "production"]["course_id"] == "c-prd-1"
    assert by_key["Math grade 8", "production"]["problem"] is None
    ds_prod = by_key["DS-101", "production"]
    assert ds_prod["course_id"] == "not synced" and "not synced for production" in ds_prod["problem"]
    assert by_key["DS-101", "staging"]["object_id_prefix"] == "https://notebooks.example.org/activities/DS-101/"
    text = json.dumps(rows)
    assert SECRET not in text and "client-1" not in text
