"""ESP webhooks against the providers' documented sample payloads (tests/fixtures/webhooks/),
signed with local keys as each provider signs: accepted and acted on; forged, wrong-key,
stale, replayed and malformed deliveries refused with the reader unchanged; unknown
addresses acknowledged; each route 404 until its setting is present."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from digest import store
from digest.readers.webhooks.ses import SnsVerifier
from tests.conftest import NOW, make_settings

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:digest-ses"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-local.pem"
MAILGUN_KEY = "key-mailgun-signing-test"
POSTMARK_AUTH = "postmark:s3cret-word"


def sample(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture(scope="module")
def sns_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.local.test")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2026, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2027, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class LocalFetch:
    """Serves the SNS certificate at its URL; records every URL asked for."""

    def __init__(self, cert: bytes) -> None:
        self.cert, self.urls = cert, []

    def __call__(self, url: str) -> bytes:
        self.urls.append(url)
        if url == CERT_URL:
            return self.cert
        if url.startswith("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"):
            return b"<ConfirmSubscriptionResponse/>"
        raise OSError("no such URL here")


@pytest.fixture
def hooks(make_app, tmp_path, database_url, clock, sns_key, sendgrid_key):
    public = sendgrid_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    settings = make_settings(
        tmp_path,
        database_url,
        DIGEST_SES_TOPIC_ARNS=TOPIC,
        DIGEST_SENDGRID_WEBHOOK_KEY=base64.b64encode(public).decode(),
        DIGEST_MAILGUN_SIGNING_KEY=MAILGUN_KEY,
        DIGEST_POSTMARK_WEBHOOK_AUTH=POSTMARK_AUTH,
    )
    app = make_app(settings, clock=clock)
    fetch = LocalFetch(sns_key[1])
    app.extensions["digest-sns"] = SnsVerifier(fetch)
    sessions = app.extensions["digest"].sessions
    with sessions() as session:
        for email in (
            "jane@example.com",
            "richard@example.com",
            "example@test.com",
            "blocked@test.com",
            "spam@test.com",
            "leaver@test.com",
            "alice@example.com",
            "john@example.com",
            "mary@example.com",
        ):
            store.add_subscriber(session, email, NOW, status="active")
        session.commit()

    class Hooks:
        client = app.test_client()

        def status(self, email: str) -> str:
            with sessions() as session:
                found = store.find_subscriber(session, email)
                assert found is not None
                return found.status

    hooks = Hooks()
    hooks.fetch = fetch  # type: ignore[attr-defined]
    return hooks


# --- Amazon SES through SNS ------------------------------------------------------------


def sns(key: rsa.RSAPrivateKey, kind: str = "Notification", **fields: str) -> dict[str, str]:
    message = {
        "Type": kind,
        "MessageId": fields.pop("MessageId", "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324"),
        "TopicArn": TOPIC,
        "Timestamp": fields.pop(
            "Timestamp", (NOW - timedelta(minutes=1)).isoformat()[:19] + ".000Z"
        ),
        "SignatureVersion": "2",
        "SigningCertURL": CERT_URL,
        **fields,
    }
    names = (
        ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
        if kind == "Notification"
        else ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
    )
    signed = "".join(f"{n}\n{message[n]}\n" for n in names if n in message)
    signature = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    message["Signature"] = base64.b64encode(signature).decode()
    return message


def post_json(hooks, path: str, body: Any, **headers: str):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return hooks.client.post(path, data=data, headers=headers, content_type="application/json")


def test_ses_bounce_and_complaint_samples_act(hooks, sns_key) -> None:
    bounce = sns(sns_key[0], Message=json.dumps(sample("ses-bounce.json")))
    assert post_json(hooks, "/webhooks/ses", bounce).status_code == 200
    assert hooks.status("jane@example.com") == "bounced"
    assert hooks.status("richard@example.com") == "bounced"
    complaint = sns(sns_key[0], MessageId="m-2", Message=json.dumps(sample("ses-complaint.json")))
    complaint["TopicArn"] = TOPIC
    assert post_json(hooks, "/webhooks/ses", complaint).status_code == 200
    # Replayed: refused, whatever it says.
    assert post_json(hooks, "/webhooks/ses", bounce).status_code == 403
    assert hooks.fetch.urls == [CERT_URL]  # fetched once, then cached


def test_ses_transient_bounce_is_soft(hooks, sns_key) -> None:
    body = sns(sns_key[0], Message=json.dumps(sample("ses-transient.json")))
    assert post_json(hooks, "/webhooks/ses", body).status_code == 200
    assert hooks.status("jane@example.com") == "active"


def test_ses_subscription_confirmation_fetches_the_subscribe_url(hooks, sns_key) -> None:
    url = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=x&Token=t"
    body = sns(
        sns_key[0], "SubscriptionConfirmation", Message="confirm", SubscribeURL=url, Token="t"
    )
    assert post_json(hooks, "/webhooks/ses", body).status_code == 200
    assert url in hooks.fetch.urls
    evil = sns(
        sns_key[0],
        "SubscriptionConfirmation",
        MessageId="m-3",
        Message="confirm",
        SubscribeURL="https://evil.example/?Action=ConfirmSubscription",
        Token="t",
    )
    assert post_json(hooks, "/webhooks/ses", evil).status_code == 403


def test_ses_refuses_forged_stale_foreign_and_malformed(hooks, sns_key) -> None:
    message = json.dumps(sample("ses-bounce.json"))
    forged = sns(sns_key[0], Message=message)
    forged["Message"] = forged["Message"].replace("jane@", "mary@")
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    wrong_key = sns(other_key, Message=message)
    stale = sns(sns_key[0], Message=message, Timestamp="2026-11-28T08:00:00.000Z")
    foreign_topic = sns(sns_key[0], Message=message)
    foreign_topic["TopicArn"] = "arn:aws:sns:eu-west-1:123456789012:other"
    foreign_cert = sns(sns_key[0], Message=message)
    foreign_cert["SigningCertURL"] = "https://sns.eu-west-1.amazonaws.com.evil.example/x.pem"
    for body in (forged, wrong_key, stale, foreign_topic, foreign_cert):
        assert post_json(hooks, "/webhooks/ses", body).status_code == 403
    unreachable = sns(sns_key[0], Message=message)
    unreachable["SigningCertURL"] = CERT_URL.replace("local.pem", "gone.pem")
    assert post_json(hooks, "/webhooks/ses", unreachable).status_code == 503  # SNS retries
    for body in (b"not json", b"[]", {"Type": "Other"}):
        assert post_json(hooks, "/webhooks/ses", body).status_code == 400
    assert hooks.fetch.urls.count("https://sns.eu-west-1.amazonaws.com.evil.example/x.pem") == 0
    assert hooks.status("jane@example.com") == "active"
    assert hooks.status("mary@example.com") == "active"


# --- SendGrid ---------------------------------------------------------------------------


def sendgrid_headers(key: ec.EllipticCurvePrivateKey, body: bytes, at: datetime) -> dict[str, str]:
    stamp = str(int(at.timestamp()))
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
    }


def test_sendgrid_sample_events_act(hooks, sendgrid_key) -> None:
    body = json.dumps(sample("sendgrid-events.json")).encode()
    headers = sendgrid_headers(sendgrid_key, body, NOW)
    assert post_json(hooks, "/webhooks/sendgrid", body, **headers).status_code == 200
    assert hooks.status("example@test.com") == "bounced"
    assert hooks.status("blocked@test.com") == "active"  # blocked: a soft bounce
    assert hooks.status("spam@test.com") == "complained"
    assert hooks.status("leaver@test.com") == "unsubscribed"
    # stranger@test.com is no reader: acknowledged above (200), nothing else.
    assert post_json(hooks, "/webhooks/sendgrid", body, **headers).status_code == 403  # replay


def test_sendgrid_refuses_forged_wrong_key_stale_and_unsigned(hooks, sendgrid_key) -> None:
    body = json.dumps(sample("sendgrid-events.json")).encode()
    forged = body.replace(b"example@test.com", b"alice@example.com")
    headers = sendgrid_headers(sendgrid_key, body, NOW)
    assert post_json(hooks, "/webhooks/sendgrid", forged, **headers).status_code == 403
    other = ec.generate_private_key(ec.SECP256R1())
    wrong = sendgrid_headers(other, body, NOW)
    assert post_json(hooks, "/webhooks/sendgrid", body, **wrong).status_code == 403
    stale = sendgrid_headers(sendgrid_key, body, NOW - timedelta(hours=1))
    assert post_json(hooks, "/webhooks/sendgrid", body, **stale).status_code == 403
    assert post_json(hooks, "/webhooks/sendgrid", body).status_code == 401
    garbage = {**headers, "X-Twilio-Email-Event-Webhook-Signature": "!!"}
    assert post_json(hooks, "/webhooks/sendgrid", body, **garbage).status_code == 403
    assert hooks.status("example@test.com") == "active"


# --- Mailgun ----------------------------------------------------------------------------


def mailgun_signed(name: str, at: datetime, token: str = "", key: str = MAILGUN_KEY) -> dict:
    payload = sample(name)
    stamp = str(int(at.timestamp()))
    token = token or hashlib.sha256(name.encode()).hexdigest()[:50]
    mac = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    payload["signature"] = {"timestamp": stamp, "token": token, "signature": mac}
    return payload


def test_mailgun_samples_act(hooks) -> None:
    temporary = mailgun_signed("mailgun-failed-temporary.json", NOW)
    assert post_json(hooks, "/webhooks/mailgun", temporary).status_code == 200
    assert hooks.status("alice@example.com") == "active"
    permanent = mailgun_signed("mailgun-failed-permanent.json", NOW)
    assert post_json(hooks, "/webhooks/mailgun", permanent).status_code == 200
    assert hooks.status("alice@example.com") == "bounced"
    assert post_json(hooks, "/webhooks/mailgun", permanent).status_code == 403  # token replayed


def test_mailgun_refuses_forged_wrong_key_stale(hooks) -> None:
    sample_as_documented = sample("mailgun-complained.json")  # its signature is no real one
    assert post_json(hooks, "/webhooks/mailgun", sample_as_documented).status_code == 403
    wrong = mailgun_signed("mailgun-complained.json", NOW, key="another-key")
    assert post_json(hooks, "/webhooks/mailgun", wrong).status_code == 403
    stale = mailgun_signed("mailgun-complained.json", NOW - timedelta(hours=2))
    assert post_json(hooks, "/webhooks/mailgun", stale).status_code == 403
    forged = mailgun_signed("mailgun-complained.json", NOW)
    forged["signature"]["token"] = "x" + forged["signature"]["token"][1:]
    assert post_json(hooks, "/webhooks/mailgun", forged).status_code == 403
    unsigned = sample("mailgun-complained.json")
    del unsigned["signature"]
    assert post_json(hooks, "/webhooks/mailgun", unsigned).status_code == 401
    assert post_json(hooks, "/webhooks/mailgun", b"{").status_code == 400
    assert hooks.status("alice@example.com") == "active"
    good = mailgun_signed("mailgun-complained.json", NOW)
    assert post_json(hooks, "/webhooks/mailgun", good).status_code == 200
    assert hooks.status("alice@example.com") == "complained"


# --- Postmark ---------------------------------------------------------------------------


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_postmark_samples_act(hooks) -> None:
    auth = basic(POSTMARK_AUTH)
    bounce = sample("postmark-bounce.json")
    assert post_json(hooks, "/webhooks/postmark", bounce, Authorization=auth).status_code == 200
    assert hooks.status("john@example.com") == "bounced"
    complaint = sample("postmark-spam-complaint.json")
    assert post_json(hooks, "/webhooks/postmark", complaint, Authorization=auth).status_code == 200
    assert hooks.status("mary@example.com") == "complained"
    replay = post_json(hooks, "/webhooks/postmark", bounce, Authorization=auth)
    assert replay.status_code == 403


def test_postmark_refuses_wrong_or_missing_credentials(hooks) -> None:
    bounce = sample("postmark-bounce.json")
    for header in ({}, {"Authorization": basic("postmark:wrong")}, {"Authorization": "Basic %%"}):
        response = post_json(hooks, "/webhooks/postmark", bounce, **header)
        assert response.status_code == 401
        assert "Basic" in response.headers["WWW-Authenticate"]
    assert hooks.status("john@example.com") == "active"


def test_unknown_address_is_acknowledged(hooks) -> None:
    record = {**sample("postmark-bounce.json"), "Email": "nobody@example.org", "ID": 7}
    response = post_json(hooks, "/webhooks/postmark", record, Authorization=basic(POSTMARK_AUTH))
    assert response.status_code == 200


def test_every_route_is_off_until_its_setting_is_present(client) -> None:
    for provider in ("ses", "sendgrid", "mailgun", "postmark"):
        assert client.post(f"/webhooks/{provider}", data=b"{}").status_code == 404
