#!/usr/bin/env python3
"""The web client in real browsers (headless Chromium driven by Selenium).

Run by node/tests/web_browser.rs with the URLs of a running cluster's nodes:

    python3 web/tests/browser_test.py --screenshots DIR http://127.0.0.1:A http://127.0.0.1:B [...]

Two browsers, each on its own node. alice and bob register and become contacts through the
Contacts panel (a request, then accept), each seeing the other online. alice opens the
conversation and writes; bob sees it live and replies; each sees the other typing, and alice
sees "Seen" under her message once bob read it. bob replies to a message (a quote), alice
edits one and deletes another, bob reacts: each change shows on the other side. alice creates
a group with bob and both write in it. Then bob's WebSocket is dropped: alice sees him go
offline, writes on in both conversations while bob types a message offline; on reconnect
bob resumes from his event cursor and has everything, in order, once (without reading any
history again), with an unread badge on the group, and his offline message reaches alice.
An outbox message survives a page reload; logout and login keep the list; older pages load
on scroll-up. alice sends a picture (a PNG made here) and a text file through the file
input: bob sees the thumbnail live, opens the picture in the viewer and downloads the file.
bob searches (English, and Chinese phrases matched inside a sentence) and filters by sender and
by day; a hit shows its highlight and opens the conversation at that message, loading the
history around it. A revoked token leads back to the login screen. Screenshots of the main
screens go to DIR. Exits non-zero on any failure.
"""

import argparse
import os
import re
import shutil
import struct
import sys
import tempfile
import time
import zlib

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

PASSWORD = "correct horse battery"
WIDE = (1280, 800)


def log(msg):
    print(f"[browser_test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in [
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WIDE[0]},{WIDE[1]}",
        "--lang=en-US",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-features=Translate,OptimizationHints,MediaRouter",
        "--metrics-recording-only",
    ]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    d = webdriver.Chrome(options=opts, service=service)
    d.set_page_load_timeout(20)
    return d


class _Failed(Exception):
    pass


def wait(what, cond, timeout=15.0):
    """Polls `cond` (exceptions count as "not yet": the page may be mid-render)."""
    last = []

    def check(_):
        try:
            return cond()
        except Exception as e:  # noqa: BLE001
            last[:] = [e]
            return False

    try:
        return WebDriverWait(None, timeout, poll_frequency=0.1).until(check)
    except Exception:  # noqa: BLE001 - TimeoutException
        raise AssertionError(
            f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last[0]})" if last else "")
        ) from None


def visible(d, css):
    els = d.find_elements(By.CSS_SELECTOR, css)
    return bool(els) and els[0].is_displayed()


def text_of(d, css):
    els = d.find_elements(By.CSS_SELECTOR, css)
    return els[0].text if els else ""


def click(d, css):
    """Clicks the element, finding it again if a re-render replaced it meanwhile."""

    def once():
        d.find_element(By.CSS_SELECTOR, css).click()
        return True

    wait(f"a click on {css}", once, timeout=5)


def messages(d):
    return d.execute_script(
        """return [...document.querySelectorAll('#messages .msg')].map(e => ({
             seq: e.dataset.seq ? Number(e.dataset.seq) : null,
             body: e.querySelector('.body')?.textContent ?? '',
             pending: e.classList.contains('pending'),
             failed: e.classList.contains('failed'),
             deleted: e.classList.contains('deleted'),
             edited: (e.querySelector('.meta')?.textContent ?? '').includes('edited'),
             quote: e.querySelector('.quote-text')?.textContent ?? null,
             reactions: [...e.querySelectorAll('.reaction')].map(r => r.textContent),
             receipt: e.querySelector('.receipt')?.textContent ?? '',
             mine: e.classList.contains('mine')}))"""
    )


def system_rows(d):
    return d.execute_script("return [...document.querySelectorAll('#messages .system')].map(e => e.textContent)")


def bodies(d):
    return [m["body"] for m in messages(d)]


def info(d):
    return d.execute_script("return window.__chatTest.info()")


def online(d):
    return visible(d, "#status-dot.online")


def type_into(d, css, text, enter=True):
    el = d.find_element(By.CSS_SELECTOR, css)
    el.clear()
    el.send_keys(text)
    if enter:
        el.send_keys(Keys.ENTER)


def send(d, text):
    type_into(d, "#composer-input", text)


def all_acked(d, expected):
    ms = messages(d)
    return [m["body"] for m in ms] == expected and all(m["seq"] and not m["pending"] for m in ms)


def check_order(d, expected, who):
    ms = messages(d)
    got = [m["body"] for m in ms]
    assert got == expected, f"{who} shows {got}, expected {expected}"
    seqs = [m["seq"] for m in ms]
    assert all(s for s in seqs) and seqs == sorted(set(seqs)), f"{who}: seqs {seqs} are not increasing"


def msg_seq(d, body):
    for m in messages(d):
        if m["body"] == body and m["seq"]:
            return m["seq"]
    raise AssertionError(f"no acked message {body!r}")


def menu(d, seq, action):
    """Opens a message's action menu and picks an action (or a reaction with `emoji:<e>`)."""
    click(d, f'#messages .msg[data-seq="{seq}"] .msg-more')
    wait("the message menu", lambda: visible(d, "#msg-menu"), timeout=5)
    if action.startswith("emoji:"):
        d.execute_script(
            "document.querySelector(`#msg-menu [data-emoji=\"${arguments[0]}\"]`).click()", action[len("emoji:"):]
        )
    else:
        click(d, f'#msg-menu [data-action="{action}"]')


def register(d, url, username):
    d.get(url)
    wait("the login form", lambda: visible(d, "#login-form"))
    type_into(d, "#login-username", username, enter=False)
    type_into(d, "#login-password", PASSWORD, enter=False)
    d.find_element(By.ID, "register-btn").click()
    wait(f"{username} logged in and online", lambda: visible(d, "#app") and online(d))
    assert d.find_element(By.ID, "me-name").text == username


def shot(d, directory, name):
    # Toasts come and go; the screens are what is kept.
    d.execute_script("document.getElementById('toast').hidden = true")
    path = os.path.join(directory, name)
    d.save_screenshot(path)
    log(f"screenshot {path}")


# A message can reach the recipient before the recipient's node has applied the metadata write
# that makes its attachments readable by the conversation: the first link request may get a 404,
# which the client retries (media.js). The browser logs each such 404; the thumbnail must still
# show, which the media step checks.
EARLY_LINK_404 = re.compile(r"/v1/media/[0-9a-f]+/link - Failed to load resource: the server responded with a status of 404")


def console_problems(d):
    problems = []
    for entry in d.get_log("browser"):
        text = entry.get("message", "")
        if EARLY_LINK_404.search(text):
            log(f"tolerated (retried by the client): {text}")
            continue
        if entry.get("level") == "SEVERE" or "Content Security Policy" in text or "Uncaught" in text:
            problems.append(text)
    return problems


def installability_errors(d):
    errors = d.execute_cdp_cmd("Page.getInstallabilityErrors", {})["installabilityErrors"]
    if errors:
        log(f"installability: {errors}")
    return errors


def phone(d, on):
    if on:
        d.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
        )
        wait("the phone layout", lambda: d.execute_script("return innerWidth") == 390, timeout=5)
    else:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        wait("the wide layout", lambda: d.execute_script("return innerWidth") == WIDE[0], timeout=5)


def tab(d, name):
    click(d, f"#tab-{name}")
    wait(f"the {name} tab", lambda: visible(d, f"#view-{name}"), timeout=5)


def open_conv(d, conv):
    tab(d, "chats")
    click(d, f'#conv-list .conv[data-id="{conv}"]')
    wait(f"{conv} open", lambda: info(d)["current"] == conv and visible(d, "#messages"), timeout=5)


def png(width, height):
    """A real PNG (RGB, 8 bits): a sky, a lake and a sun, made with zlib alone."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    sky, lake, sun = bytes((125, 185, 232)), bytes((37, 99, 235)), bytes((253, 224, 71))
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # no filter
        for x in range(width):
            in_sun = (x - width * 0.7) ** 2 + (y - height * 0.3) ** 2 < (height * 0.12) ** 2
            rows += sun if in_sun else sky if y < height * 0.6 else lake
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + chunk(b"IEND", b"")


def last_msg_media(d):
    """The last message's image: [complete, naturalWidth, naturalHeight], and its file link."""
    return d.execute_script(
        """const ms = document.querySelectorAll('#messages .msg');
           const m = ms[ms.length - 1];
           const img = m?.querySelector('.att-image img');
           const file = m?.querySelector('a.att-file');
           return {img: img ? [img.complete, img.naturalWidth, img.naturalHeight] : null,
                   href: file?.getAttribute('href') ?? null, download: file?.download ?? null,
                   seq: m?.dataset.seq ? Number(m.dataset.seq) : null}"""
    )


def search_hits(d):
    return d.execute_script(
        """return [...document.querySelectorAll('#search-results .hit')].map(h => ({
             conv: h.dataset.conv, seq: Number(h.dataset.seq),
             snippet: h.querySelector('.hit-snippet')?.textContent ?? '',
             marks: [...h.querySelectorAll('.hit-snippet mark')].map(m => m.textContent),
             who: h.querySelector('.hit-who')?.textContent ?? ''}))"""
    )


def search_done(d):
    return d.find_element(By.ID, "search-results").get_attribute("aria-busy") == "false"


def search_until(d, what, pred, timeout=10):
    """Waits for a hit matching `pred`, searching again whenever a search ends without one:
    the index takes its ~200 ms (and a busy machine longer) to see a new message."""
    last = [time.time()]

    def cond():
        for h in search_hits(d):
            if pred(h):
                return h
        if search_done(d) and time.time() - last[0] > 0.4:
            d.find_element(By.ID, "search-input").send_keys(Keys.ENTER)
            last[0] = time.time()
        return None

    return wait(what, cond, timeout=timeout)


def search_status(d):
    return d.find_element(By.ID, "search-status").text if search_done(d) else ""


def set_day(d, css, value):
    """Sets a date input ('YYYY-MM-DD' or '') as a picker would: the value, then a change."""
    d.execute_script(
        "const e = document.querySelector(arguments[0]); e.value = arguments[1];"
        "e.dispatchEvent(new Event('change', {bubbles: true}))",
        css,
        value,
    )


def opened_at(d, conv, seq):
    """The conversation is open with the message at `seq` on screen, flashed."""
    return info(d)["current"] == conv and d.execute_script(
        """const row = document.querySelector(`#messages .msg[data-seq="${arguments[0]}"]`);
           if (!row) return false;
           const box = document.querySelector('#messages').getBoundingClientRect();
           const r = row.getBoundingClientRect();
           return row.classList.contains('flash') && r.bottom > box.top && r.top < box.bottom""",
        seq,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--screenshots", default="target/screenshots")
    ap.add_argument("urls", nargs="+")
    args = ap.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)
    for stale in ("failure-alice.png", "failure-bob.png"):
        if os.path.exists(os.path.join(args.screenshots, stale)):
            os.remove(os.path.join(args.screenshots, stale))
    url_a = args.urls[0]
    url_b = args.urls[1 % len(args.urls)]
    url_c = args.urls[-1]
    started = time.time()

    scratch = tempfile.mkdtemp(prefix="chat-browser-test-")  # the files alice sends
    a = browser()
    b = browser()
    try:
        # The login screen, served by yet another node.
        a.get(url_c)
        wait("the login form", lambda: visible(a, "#login-form"))
        shot(a, args.screenshots, "login.png")
        wait("an installable app (manifest, icon)", lambda: installability_errors(a) == [], timeout=10)

        register(a, url_a, "alice")
        register(b, url_b, "bob")
        alice_id = info(a)["userId"]
        bob_id = info(b)["userId"]
        log("registered alice on %s and bob on %s" % (url_a, url_b))

        # An error frame, in plain words.
        type_into(a, "#open-username", "nobody-here")
        wait("the not-found error", lambda: "no user with that name" in a.find_element(By.ID, "toast").text)
        a.find_element(By.ID, "toast").click()
        wait("the error dismissed", lambda: not visible(a, "#toast"))

        # Contacts: alice asks, bob accepts; each sees the other online.
        tab(a, "contacts")
        type_into(a, "#add-contact-username", "bob")
        wait("alice's request to bob listed", lambda: visible(a, f'#outgoing-list li[data-user="{bob_id}"]'))
        wait("bob's contacts badge", lambda: text_of(b, "#contacts-badge") == "1")
        tab(b, "contacts")
        click(b, f'#incoming-list li[data-user="{alice_id}"] button[data-action="accept"]')
        wait(
            "alice online in bob's contacts",
            lambda: b.find_element(By.CSS_SELECTOR, f'#contact-list li[data-user="{alice_id}"]').get_attribute("data-presence")
            == "online",
        )
        wait(
            "bob online in alice's contacts",
            lambda: a.find_element(By.CSS_SELECTOR, f'#contact-list li[data-user="{bob_id}"]').get_attribute("data-presence")
            == "online",
        )
        assert not visible(a, "#outgoing-list"), "the request is answered"
        assert "online" in text_of(a, f'#contact-list li[data-user="{bob_id}"] .person-line')
        shot(a, args.screenshots, "contacts.png")
        log("contact request, accept and presence: ok")

        # alice opens the conversation from her contacts and writes; bob's browser learns of it
        # from the pushes.
        click(a, f'#contact-list li[data-user="{bob_id}"] button[data-action="message"]')
        wait("the conversation with bob", lambda: a.find_element(By.ID, "conv-title").text == "bob")
        dm = info(a)["current"]
        wait("bob's presence in the header", lambda: a.find_element(By.ID, "conv-sub").get_attribute("data-presence") == "online")
        first = [
            "Hi Bob! Are you around?",
            "The web client is up: every node serves it at /",
            "Open http://127.0.0.1:8080 after ./scripts/run-node and log in.",
        ]
        for text in first:
            send(a, text)
        wait("alice's messages acked", lambda: all_acked(a, first))
        tab(b, "chats")
        wait(
            "the conversation in bob's list",
            lambda: b.find_element(By.CSS_SELECTOR, f'#conv-list .conv[data-id="{dm}"] .conv-name').text == "alice",
        )
        wait("the unread badge in bob's list", lambda: text_of(b, f'#conv-list .conv[data-id="{dm}"] .badge') == "3")
        open_conv(b, dm)
        wait("bob sees alice's messages", lambda: all_acked(b, first))

        # Live both ways, with typing indicators and a read receipt.
        expected = first + ["No install needed, and it fits a phone screen too."]
        send(a, expected[-1])
        wait("bob sees the live message", lambda: bodies(b) == expected)
        wait("Seen under alice's message", lambda: messages(a)[-1]["receipt"] == "Seen")
        reply_text = "Nice! I'm on another node and got each one live."
        type_into(b, "#composer-input", reply_text, enter=False)
        wait("alice sees bob typing", lambda: a.find_element(By.ID, "typing").text == "bob is typing…", timeout=8)
        b.find_element(By.ID, "composer-input").send_keys(Keys.ENTER)
        expected.append(reply_text)
        wait("alice sees bob's reply", lambda: bodies(a) == expected)
        wait("the typing indicator gone", lambda: a.find_element(By.ID, "typing").text == "", timeout=8)
        type_into(a, "#composer-input", "x", enter=False)
        wait("bob sees alice typing", lambda: b.find_element(By.ID, "typing").text == "alice is typing…", timeout=8)
        a.find_element(By.ID, "composer-input").clear()
        check_order(a, expected, "alice")
        check_order(b, expected, "bob")
        log("live delivery, typing and receipts: ok")

        # A reply (bob quotes alice's first message), an edit and a deletion (alice), a reaction (bob).
        menu(b, msg_seq(b, first[0]), "reply")
        wait("bob's reply banner", lambda: "Replying to alice" in b.find_element(By.ID, "compose-context").text, timeout=5)
        send(b, "Yes, right here.")
        expected.append("Yes, right here.")
        wait("alice sees the reply with its quote", lambda: bodies(a) == expected and messages(a)[-1]["quote"] == first[0])
        edited = "Open http://127.0.0.1:8080 after ./scripts/run-node, then log in."
        menu(a, msg_seq(a, first[2]), "edit")
        wait("alice's edit banner", lambda: visible(a, "#compose-context") and a.find_element(By.ID, "composer-input").get_attribute("value") == first[2], timeout=5)
        send(a, edited)
        expected[2] = edited
        wait("bob sees the edit", lambda: bodies(b) == expected and messages(b)[2]["edited"])
        menu(a, msg_seq(a, first[1]), "delete")
        wait("the confirmation", lambda: visible(a, "#confirm-dialog"), timeout=5)
        click(a, "#confirm-ok")
        expected[1] = "message deleted"
        wait("bob sees the deletion", lambda: bodies(b) == expected and messages(b)[1]["deleted"])
        menu(b, msg_seq(b, expected[3]), "emoji:👍")
        wait("alice sees the reaction", lambda: messages(a)[3]["reactions"] == ["👍 1"])
        wait("bob's own reaction acked", lambda: messages(b)[3]["reactions"] == ["👍 1"] and info(b)["outbox"] == 0)
        check_order(a, expected, "alice")
        check_order(b, expected, "bob")
        log("reply, edit, delete and reaction: ok")

        # Screens: the conversation wide (bob's side), then on a phone (conversation and list).
        shot(b, args.screenshots, "conversation-wide.png")
        phone(a, True)
        a.execute_script("document.querySelector('#messages').scrollTop = 1e9")
        wait("phone: the conversation alone", lambda: visible(a, "#back-btn") and not visible(a, ".sidebar"), timeout=5)
        shot(a, args.screenshots, "conversation-phone.png")
        a.find_element(By.ID, "back-btn").click()
        wait("the list on the phone", lambda: visible(a, ".sidebar") and not visible(a, ".pane"))
        shot(a, args.screenshots, "list-phone.png")
        tab(a, "contacts")
        shot(a, args.screenshots, "contacts-phone.png")
        open_conv(a, dm)
        wait("the conversation again", lambda: visible(a, "#messages") and not visible(a, ".sidebar"))
        phone(a, False)
        wait("the wide layout again", lambda: visible(a, ".sidebar") and visible(a, "#messages"))

        # A group: alice creates it with bob from her contacts; both write in it.
        click(a, "#new-group-btn")
        wait("the new group form", lambda: visible(a, "#group-new-dialog"), timeout=5)
        type_into(a, "#group-name", "Weekend trip", enter=False)
        type_into(a, "#group-description", "Saturday at the lake", enter=False)
        click(a, f'#group-contacts-list input[value="{bob_id}"]')
        click(a, "#group-create")
        wait("the group open", lambda: info(a)["current"].startswith("g:") and a.find_element(By.ID, "conv-title").text == "Weekend trip")
        group = info(a)["current"]
        wait("the group's creation in alice's timeline", lambda: system_rows(a) == ["You created the group"])
        group_msgs = ["Who's in for Saturday?"]
        send(a, group_msgs[0])
        wait(
            "the group in bob's list",
            lambda: b.find_element(By.CSS_SELECTOR, f'#conv-list .conv[data-id="{group}"] .conv-name').text == "Weekend trip",
        )
        open_conv(b, group)
        wait("bob sees the group", lambda: all_acked(b, group_msgs) and system_rows(b) == ["alice created the group"])
        group_msgs.append("Count me in!")
        send(b, group_msgs[-1])
        wait("alice sees bob in the group", lambda: all_acked(a, group_msgs))
        wait("the sender's name in the group", lambda: text_of(a, "#messages .msg.theirs .sender") == "bob")
        wait("alice sees bob read the group", lambda: messages(a)[0]["receipt"] == "Seen by bob")
        shot(a, args.screenshots, "group.png")
        click(a, "#conv-info-btn")
        wait(
            "the group's members with roles",
            lambda: a.find_element(By.CSS_SELECTOR, f'#group-members li[data-user="{alice_id}"]').get_attribute("data-role") == "owner"
            and a.find_element(By.CSS_SELECTOR, f'#group-members li[data-user="{bob_id}"]').get_attribute("data-role") == "member",
        )
        shot(a, args.screenshots, "group-info.png")
        a.switch_to.active_element.send_keys(Keys.ESCAPE)
        wait("the group details closed", lambda: not visible(a, "#group-dialog"), timeout=5)
        log("group: ok")

        # bob's connection drops; alice sees him go offline and writes on in both conversations;
        # bob types offline. On reconnect bob resumes from his event cursor.
        open_conv(b, dm)
        open_conv(a, dm)
        wait("bob's DM loaded", lambda: all_acked(b, expected))
        before = info(b)
        assert before["connects"] == 1, before
        b.execute_script("window.__chatTest.dropConnection(60000)")
        wait("bob offline", lambda: not online(b) and visible(b, "#status-banner"), timeout=5)
        wait("alice sees bob offline", lambda: a.find_element(By.ID, "conv-sub").get_attribute("data-presence") == "offline", timeout=5)
        offline_text = "typed while offline"
        send(b, offline_text)
        wait("bob's offline message pending", lambda: messages(b)[-1]["pending"] and messages(b)[-1]["body"] == offline_text)
        shot(b, args.screenshots, "offline-pending.png")
        missed = [f"missed {i}" for i in range(1, 6)]
        for text in missed:
            send(a, text)
        wait("alice's messages acked", lambda: all_acked(a, expected + missed))
        open_conv(a, group)
        group_msgs.append("Bring snacks.")
        send(a, group_msgs[-1])
        wait("alice's group message acked", lambda: all_acked(a, group_msgs))
        assert info(b)["connects"] == 1 and info(b)["outbox"] == 1, info(b)
        b.execute_script("window.__chatTest.reconnect()")
        expected += missed + [offline_text]
        wait("bob reconnected and caught up", lambda: online(b) and all_acked(b, expected), timeout=20)
        after = info(b)
        assert after["connects"] == 2 and after["outbox"] == 0, after
        assert after["resumedFrom"] and after["resumedFrom"] >= before["cursor"], (before, after)
        assert after["history"] == before["history"], f"bob read history again: {before} -> {after}"
        assert after["resyncs"] == 0, after
        check_order(b, expected, "bob")
        wait("the group's unread badge in bob's list", lambda: text_of(b, f'#conv-list .conv[data-id="{group}"] .badge') == "1")
        open_conv(b, group)
        wait("bob has the group message", lambda: all_acked(b, group_msgs))
        open_conv(a, dm)
        wait("alice has bob's offline message", lambda: bodies(a) == expected)
        check_order(a, expected, "alice")
        wait("alice sees bob online again", lambda: a.find_element(By.ID, "conv-sub").get_attribute("data-presence") == "online")
        log("reconnect via the event cursor, catch-up and outbox: ok")

        # The outbox lives in localStorage: a message typed offline survives a reload.
        open_conv(b, dm)
        b.execute_script("window.__chatTest.dropConnection(60000)")
        wait("bob offline", lambda: not online(b), timeout=5)
        send(b, "survives a reload")
        wait("pending", lambda: messages(b)[-1]["pending"])
        b.refresh()
        expected.append("survives a reload")
        wait("bob back after the reload, message sent", lambda: online(b) and all_acked(b, expected), timeout=20)
        wait("alice has it once", lambda: bodies(a) == expected)
        check_order(a, expected, "alice")
        log("outbox across a reload: ok")

        # Log out and in again: the conversation list is still there.
        b.find_element(By.ID, "logout-btn").click()
        wait("bob's login form", lambda: visible(b, "#login-form"))
        type_into(b, "#login-username", "bob", enter=False)
        type_into(b, "#login-password", PASSWORD)
        wait("bob back in", lambda: visible(b, "#app") and online(b))
        wait("bob's list kept", lambda: b.find_element(By.CSS_SELECTOR, f'#conv-list .conv[data-id="{dm}"] .conv-name').text == "alice")
        open_conv(b, dm)
        wait("bob's history after login", lambda: all_acked(b, expected))
        log("logout and login: ok")

        # Older pages on scroll-up: after a reload bob holds only the latest page.
        bulk = [f"note {i}" for i in range(1, 61)]  # short: typing them is most of this step
        a.find_element(By.ID, "composer-input").send_keys("".join(t + "\n" for t in bulk))
        expected += bulk
        wait("alice's long run acked", lambda: all_acked(a, expected), timeout=30)
        b.refresh()
        wait("bob's latest page", lambda: online(b) and bodies(b)[-1] == bulk[-1])
        assert len(messages(b)) < len(expected), "a reload starts from the latest page only"
        for _ in range(20):
            if bodies(b) == expected:
                break
            held = len(messages(b))
            b.execute_script("document.querySelector('#messages').scrollTop = 0")
            wait("an older page", lambda: len(messages(b)) > held or bodies(b) == expected, timeout=5)
        check_order(b, expected, "bob after scrolling up")
        log("history pages on scroll-up: ok")

        # A profile change reaches the contact live (a profile_changed event).
        click(a, "#me-btn")
        wait("alice's profile form", lambda: visible(a, "#profile-dialog") and a.find_element(By.ID, "profile-dm").get_attribute("value") == "anyone")
        type_into(a, "#profile-display", "Alice Liddell", enter=False)
        type_into(a, "#profile-status", "At the lake", enter=False)
        click(a, "#profile-save")
        wait("the profile saved", lambda: not visible(a, "#profile-dialog"))
        wait("bob sees alice's new name", lambda: b.find_element(By.ID, "conv-title").text == "Alice Liddell")
        tab(b, "contacts")
        wait("bob sees alice's status", lambda: "At the lake" in text_of(b, f'#contact-list li[data-user="{alice_id}"] .person-line'))
        log("profile: ok")

        # Media: alice attaches a picture and a text file through the file input and sends them
        # with a caption; bob sees the thumbnail live (a real thumbnail, smaller than the
        # picture), opens the picture in the viewer and downloads the file.
        picture = os.path.join(scratch, "lake.png")
        with open(picture, "wb") as f:
            f.write(png(480, 320))
        notes_text = "tent\nsnacks\nsunscreen\n"
        notes = os.path.join(scratch, "packing-list.txt")
        with open(notes, "w") as f:
            f.write(notes_text)
        a.find_element(By.ID, "file-input").send_keys(picture + "\n" + notes)
        wait("alice's two uploads done", lambda: len(a.find_elements(By.CSS_SELECTOR, "#tray .chip.done")) == 2)
        assert a.find_element(By.CSS_SELECTOR, "#tray .chip-thumb").get_attribute("src").startswith("blob:")
        caption = "The lake this morning, and what to pack"
        send(a, caption)
        expected.append(caption)
        wait("alice's files acked", lambda: all_acked(a, expected) and not visible(a, "#tray"))

        def thumbnail_shown():
            img = last_msg_media(b)["img"]
            return bodies(b)[-1] == caption and img and img[0] and img[1] > 0

        wait("bob sees the thumbnail", thumbnail_shown)
        shown = last_msg_media(b)
        assert 0 < shown["img"][1] <= 320 and shown["img"][2] > 0, f"the thumbnail: {shown}"
        assert shown["download"] == "packing-list.txt" and shown["href"], shown
        got = b.execute_script("return fetch(arguments[0]).then(r => r.text())", shown["href"])
        assert got == notes_text, f"the downloaded file: {got!r}"
        b.execute_script("document.querySelector('#messages').scrollTop = 1e9")
        shot(b, args.screenshots, "media.png")
        click(b, f'#messages .msg[data-seq="{shown["seq"]}"] .att-image')
        wait(
            "the picture in bob's viewer",
            lambda: visible(b, "#image-dialog")
            and b.execute_script("const i = document.getElementById('image-full'); return i.complete && i.naturalWidth") == 480,
        )
        assert b.find_element(By.ID, "image-name").text == "lake.png"
        shot(b, args.screenshots, "media-viewer.png")
        click(b, "#image-dialog [data-close]")
        wait("the viewer closed", lambda: not visible(b, "#image-dialog"), timeout=5)
        log("picture and file through the file input, thumbnail, viewer, download: ok")

        # Search. alice writes in Chinese; bob reloads (so the early messages are not on his
        # page any more), finds an English word from the start and a Chinese phrase inside
        # alice's sentence, filters by sender and day, and opens the hits.
        zh = "我们明天去北京开会"
        send(a, zh)
        expected.append(zh)
        wait("bob sees the Chinese message", lambda: bodies(b)[-1] == zh)
        zh_seq = msg_seq(b, zh)
        zh_ts = b.execute_script(
            "return Date.parse(document.querySelector(`#messages .msg[data-seq=\"${arguments[0]}\"] time`).dateTime)", zh_seq
        )
        b.refresh()
        wait("bob back after a reload", lambda: online(b) and bodies(b) and bodies(b)[-1] == zh)
        early = expected[3]  # "No install needed, …", sent before the 60 notes
        assert early not in bodies(b), "the early message is not loaded yet"
        tab(b, "chats")
        type_into(b, "#search-input", "install")
        early_seq = msg_seq(a, early)
        hit = search_until(b, "a hit for 'install'", lambda h: h["seq"] == early_seq)
        assert hit["conv"] == dm and "No install needed" in hit["snippet"], hit
        assert hit["marks"] == ["install"] and hit["who"] == "Alice Liddell", hit
        click(b, f'#search-results .hit[data-seq="{hit["seq"]}"]')
        wait("the early message opened in its conversation", lambda: opened_at(b, dm, hit["seq"]))
        assert bodies(b)[-1] != zh, "only the history around the hit is loaded"
        type_into(b, "#search-input", "北京")
        hit = search_until(b, "a hit for 北京", lambda h: h["seq"] == zh_seq)
        assert hit["conv"] == dm and zh in hit["snippet"] and hit["marks"] == ["北京"], hit
        type_into(b, "#search-input", "明天 开会")
        hit = search_until(b, "a hit for 明天 开会", lambda h: h["seq"] == zh_seq)
        assert hit["marks"] == ["明天", "开会"], hit
        # Filters: the sender, then a range of days (that of the message, and the day before).
        click(b, "#search-filters-btn")
        wait("the filters", lambda: visible(b, "#search-filters"), timeout=5)
        Select(b.find_element(By.ID, "search-sender")).select_by_value(str(bob_id))
        wait("nothing from bob", lambda: search_status(b) == "No messages found with these filters." and not search_hits(b))
        Select(b.find_element(By.ID, "search-sender")).select_by_value(str(alice_id))
        wait("alice's message again", lambda: search_done(b) and [h["seq"] for h in search_hits(b)] == [zh_seq])
        day, day_before = b.execute_script(
            """const iso = (d) => [d.getFullYear(), d.getMonth() + 1, d.getDate()].map((n) => String(n).padStart(2, '0')).join('-');
               const t = new Date(arguments[0]);
               const before = new Date(t);
               before.setDate(t.getDate() - 1);
               return [iso(t), iso(before)]""",
            zh_ts,
        )
        set_day(b, "#search-to", day_before)
        wait("nothing up to the day before", lambda: search_status(b) == "No messages found with these filters." and not search_hits(b))
        set_day(b, "#search-to", "")
        set_day(b, "#search-from", day)
        wait("alice's message from its day on", lambda: search_done(b) and [h["seq"] for h in search_hits(b)] == [zh_seq])
        assert text_of(b, "#search-filters-count") == "2" and visible(b, "#search-filters-count")
        assert "with these filters" in search_status(b)
        click(b, f'#search-results .hit[data-seq="{zh_seq}"]')
        wait("the Chinese message opened in its conversation", lambda: opened_at(b, dm, zh_seq))
        shot(b, args.screenshots, "search.png")
        # On a phone: the filters fit the width, and a hit opens the conversation alone.
        phone(b, True)
        click(b, "#back-btn")
        wait("the search on the phone", lambda: visible(b, "#search-filters") and visible(b, "#search-results .hit"), timeout=5)
        overflow = b.execute_script(
            """return [...document.querySelectorAll('#search-filters select, #search-filters input, .search-head > *')]
                 .filter(e => e.getBoundingClientRect().right > innerWidth + 0.5 || e.getBoundingClientRect().width < 32)
                 .map(e => e.id || e.tagName)"""
        )
        assert not overflow, f"search controls too wide or too narrow on a phone: {overflow}"
        shot(b, args.screenshots, "search-phone.png")
        click(b, f'#search-results .hit[data-seq="{zh_seq}"]')
        wait("phone: the hit's conversation alone", lambda: opened_at(b, dm, zh_seq) and not visible(b, ".sidebar"))
        phone(b, False)
        click(b, "#search-clear")
        wait("the filters cleared", lambda: not visible(b, "#search-filters-count") and search_done(b) and search_hits(b))
        click(b, "#search-close")
        wait("the search closed", lambda: not visible(b, "#search-panel") and visible(b, "#conv-list"), timeout=5)
        log("search (English, Chinese, filters by sender and day, opening hits): ok")

        for name, d in (("alice", a), ("bob", b)):
            problems = console_problems(d)
            assert not problems, f"{name}'s console: {problems}"

        # A revoked token (logged out elsewhere) sends the page back to the login screen at
        # the next connect.
        b.execute_script(
            "const s = JSON.parse(localStorage.getItem('chat.session'));"
            "return fetch('/v1/logout', {method: 'POST', headers: {authorization: 'Bearer ' + s.token}})"
            ".then(r => r.status)"
        )
        b.execute_script("window.__chatTest.dropConnection(0)")
        wait("bob asked to log in again", lambda: visible(b, "#login-form")
             and "session has ended" in b.find_element(By.ID, "login-error").text)
        log("revoked token: ok")
        # The refused upgrade and the 401 of the check are logged by the browser; nothing else.
        problems = [p for p in console_problems(b) if "401" not in p and "Authentication failed" not in p]
        assert not problems, f"bob's console: {problems}"
        log(f"all checks passed in {time.time() - started:.1f}s")
    except Exception:
        for name, d in (("alice", a), ("bob", b)):
            try:
                shot(d, args.screenshots, f"failure-{name}.png")
                for entry in d.get_log("browser"):
                    log(f"{name} console: {entry.get('level')} {entry.get('message')}")
            except Exception as e:  # noqa: BLE001
                log(f"could not capture {name}'s state: {e}")
        raise
    finally:
        a.quit()
        b.quit()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        log(f"FAILED: {e}")
        sys.exit(1)
