#!/usr/bin/env python3
"""The web client in real browsers (headless Chromium driven by Selenium).

Run by node/tests/web_browser.rs with the URLs of a running cluster's nodes:

    python3 web/tests/browser_test.py --screenshots DIR http://127.0.0.1:A http://127.0.0.1:B [...]

Two browsers, each on its own node: alice and bob register, alice opens a conversation with
bob and writes, bob sees it live and replies. Then bob's WebSocket is dropped while alice
writes more and bob types a message offline: after the reconnect bob has everything, in
order, once, and his offline message reaches alice. An outbox message survives a page reload.
Screenshots of the main screens go to DIR. Exits non-zero on any failure.
"""

import argparse
import os
import shutil
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

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


def wait(what, cond, timeout=15.0):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - the page may be mid-render
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last})" if last else ""))


def visible(d, css):
    els = d.find_elements(By.CSS_SELECTOR, css)
    return bool(els) and els[0].is_displayed()


def messages(d):
    return d.execute_script(
        """return [...document.querySelectorAll('#messages .msg')].map(e => ({
             seq: e.dataset.seq ? Number(e.dataset.seq) : null,
             body: e.querySelector('.body').textContent,
             pending: e.classList.contains('pending'),
             failed: e.classList.contains('failed'),
             mine: e.classList.contains('mine')}))"""
    )


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
    assert seqs == list(range(1, len(expected) + 1)), f"{who}: seqs {seqs} are not 1..{len(expected)}"


def register(d, url, username):
    d.get(url)
    wait("the login form", lambda: visible(d, "#login-form"))
    type_into(d, "#login-username", username, enter=False)
    type_into(d, "#login-password", PASSWORD, enter=False)
    d.find_element(By.ID, "register-btn").click()
    wait(f"{username} logged in and online", lambda: visible(d, "#app") and online(d))
    assert d.find_element(By.ID, "me-name").text == username


def shot(d, directory, name):
    path = os.path.join(directory, name)
    d.save_screenshot(path)
    log(f"screenshot {path}")


def console_problems(d):
    problems = []
    for entry in d.get_log("browser"):
        text = entry.get("message", "")
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
    else:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


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
        log("registered alice on %s and bob on %s" % (url_a, url_b))

        # An error frame, in plain words.
        type_into(a, "#open-username", "nobody-here")
        wait("the not-found error", lambda: "no user with that name" in a.find_element(By.ID, "toast").text)
        a.find_element(By.ID, "toast").click()
        wait("the error dismissed", lambda: not visible(a, "#toast"))

        # alice opens the conversation and writes; bob's browser learns of it from the pushes.
        type_into(a, "#open-username", "bob")
        wait("the conversation with bob", lambda: a.find_element(By.ID, "conv-title").text == "bob")
        first = [
            "Hi Bob! Are you around?",
            "The web client is up: every node serves it at /",
            "Open http://127.0.0.1:8080 after ./scripts/run-node and log in.",
        ]
        for text in first:
            send(a, text)
        wait("alice's messages acked", lambda: all_acked(a, first))
        wait(
            "the conversation in bob's list",
            lambda: b.find_element(By.CSS_SELECTOR, "#conv-list .conv .conv-name").text == "alice",
        )
        b.find_element(By.CSS_SELECTOR, "#conv-list .conv").click()
        wait("bob sees alice's messages", lambda: all_acked(b, first))

        # Live both ways.
        expected = first + ["No install needed, and it fits a phone screen too."]
        send(a, expected[-1])
        wait("bob sees the live message", lambda: bodies(b) == expected)
        expected.append("Nice! I'm on another node and got each one live.")
        send(b, expected[-1])
        wait("alice sees bob's reply", lambda: bodies(a) == expected)
        check_order(a, expected, "alice")
        check_order(b, expected, "bob")
        log("live delivery both ways: ok")

        # Screens: the conversation wide (bob's side), then on a phone (conversation and list).
        shot(b, args.screenshots, "conversation-wide.png")
        phone(a, True)
        time.sleep(0.3)
        a.execute_script("document.querySelector('#messages').scrollTop = 1e9")
        assert visible(a, "#back-btn") and not visible(a, ".sidebar"), "phone: the conversation alone"
        shot(a, args.screenshots, "conversation-phone.png")
        a.find_element(By.ID, "back-btn").click()
        wait("the list on the phone", lambda: visible(a, ".sidebar") and not visible(a, ".pane"))
        shot(a, args.screenshots, "list-phone.png")
        a.find_element(By.CSS_SELECTOR, "#conv-list .conv").click()
        wait("the conversation again", lambda: visible(a, "#messages") and not visible(a, ".sidebar"))
        phone(a, False)
        wait("the wide layout again", lambda: visible(a, ".sidebar") and visible(a, "#messages"))

        # bob's connection drops; alice writes on, bob types offline.
        assert info(b)["connects"] == 1, info(b)
        b.execute_script("window.__chatTest.dropConnection(4000)")
        wait("bob offline", lambda: not online(b) and visible(b, "#status-banner"), timeout=5)
        offline_text = "typed while offline"
        send(b, offline_text)
        wait("bob's offline message pending", lambda: messages(b)[-1]["pending"] and messages(b)[-1]["body"] == offline_text)
        shot(b, args.screenshots, "offline-pending.png")
        missed = [f"missed {i}" for i in range(1, 6)]
        for text in missed:
            send(a, text)
        wait("alice's messages acked", lambda: all_acked(a, expected + missed))
        assert info(b)["connects"] == 1 and info(b)["outbox"] == 1, info(b)
        expected += missed + [offline_text]
        wait("bob reconnected and caught up", lambda: online(b) and all_acked(b, expected), timeout=20)
        assert info(b)["connects"] == 2 and info(b)["outbox"] == 0, info(b)
        check_order(b, expected, "bob")
        wait("alice has bob's offline message", lambda: bodies(a) == expected)
        check_order(a, expected, "alice")
        log("reconnect, catch-up and outbox: ok")

        # The outbox lives in localStorage: a message typed offline survives a reload.
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
        wait("bob's list kept", lambda: b.find_element(By.CSS_SELECTOR, "#conv-list .conv-name").text == "alice")
        b.find_element(By.CSS_SELECTOR, "#conv-list .conv").click()
        wait("bob's history after login", lambda: all_acked(b, expected))
        log("logout and login: ok")

        # Older pages on scroll-up: after a reload bob holds only the latest page.
        bulk = [f"message {i} of a long day" for i in range(1, 61)]
        a.find_element(By.ID, "composer-input").send_keys("".join(t + "\n" for t in bulk))
        expected += bulk
        wait("alice's long run acked", lambda: all_acked(a, expected), timeout=30)
        b.refresh()
        wait("bob's latest page", lambda: online(b) and bodies(b)[-1] == bulk[-1])
        assert len(messages(b)) < len(expected), "a reload starts from the latest page only"
        for _ in range(20):
            if bodies(b) == expected:
                break
            b.execute_script("document.querySelector('#messages').scrollTop = 0")
            time.sleep(0.3)
        check_order(b, expected, "bob after scrolling up")
        log("history pages on scroll-up: ok")

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


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        log(f"FAILED: {e}")
        sys.exit(1)
