#!/usr/bin/env python3
"""Deterministic generator of varied Segment events for differential testing of
the Iterable (Actions) destination.

Writes tests/data/differential/cases.jsonl (relative to the crate root, or to
the path given with --out). Every line is one input line for the actions-oracle
(/work/shared/tools/actions-oracle/oracle.mjs):

  {"name": "gen-0001-identify", "action": "updateUser", "settings": {...}, "event": {...}}
  {"name": "gen-3901-batch-track", "action": "trackEvent", "settings": {...}, "events": [...]}

The action is the one Segment's automatic presets pick:
  identify                      -> updateUser
  track "Cart Updated"          -> updateCart
  track "Order Completed"       -> trackPurchase
  any other track               -> trackEvent

Python 3 standard library only. The output depends only on SEED and the code:
no clock, no environment, no hash ordering.
"""

import argparse
import json
import os
import random
import uuid

SEED = 20240517
N_SINGLE = 3850          # single-event lines
N_BATCH = 150            # batch lines (1-20 events each)
P_BAD = 0.30             # share of events that get at least one bad value
P_EDGE = 0.25            # per field: share of "odd but probably valid" values

MISSING = object()       # sentinel: leave the key out


class G:
    """Thin wrapper around a seeded random.Random."""

    def __init__(self, seed):
        self.r = random.Random(seed)

    def pick(self, seq):
        v = self.r.choice(seq)
        return v(self) if callable(v) else v

    def chance(self, p):
        return self.r.random() < p

    def int(self, a, b):
        return self.r.randint(a, b)

    def hex(self, n):
        return "".join(self.r.choice("0123456789abcdef") for _ in range(n))

    def uuid(self):
        return str(uuid.UUID(int=self.r.getrandbits(128), version=4))

    def weighted(self, pairs):
        total = sum(w for w, _ in pairs)
        x = self.r.random() * total
        for w, v in pairs:
            x -= w
            if x < 0:
                return v(self) if callable(v) else v
        v = pairs[-1][1]
        return v(self) if callable(v) else v


def put(d, key, value):
    if value is not MISSING:
        d[key] = value


# --------------------------------------------------------------------------- vocab

FIRST = ["Ann", "Bob", "Carla", "Dmitri", "Zoë", "José", "Łukasz", "Ingrid", "Kenji", "Fatima",
         "Ольга", "渡辺", "محمد", "Siobhán", "Nguyễn", "Ümit", "Chloé", "Raj", "Mei", "Ωmega"]
LAST = ["Smith", "Müller", "García", "Øvergaard", "Kowalski", "O'Brien", "Tanaka", "Dubois",
        "Иванова", "李", "Nakamura", "Ferreira", "Björk", "van der Berg", "Nuñez"]
ASCII_FIRST = ["ann", "bob", "carla", "dmitri", "zoe", "jose", "lukasz", "ingrid", "kenji", "fatima"]
ASCII_LAST = ["smith", "muller", "garcia", "kowalski", "obrien", "tanaka", "dubois", "berg"]
DOMAINS = ["example.com", "example.org", "mail.example.co.uk", "test.io", "shop.example.de"]
PLANS = ["free", "pro", "enterprise", "Premium ✨", "básico", None, ""]
CITIES = ["San Francisco", "Zürich", "São Paulo", "Kraków", "東京", "Москва", "Reykjavík", "Αθήνα"]
COUNTRIES = ["US", "DE", "BR", "PL", "JP", "RU", "IS", "GR", "FR"]
LIBS = [("analytics.js", "4.1.0"), ("analytics-ios", "4.1.8"), ("analytics-android", "4.10.4"),
        ("analytics-node", "6.2.0"), ("analytics-python", "2.2.2"), ("@segment/analytics-next", "1.53.0")]
PRODUCT_NAMES = ["Mug", "Tea", "Monopoly: 3rd Edition", "Café Crème", "Ücretsiz Kalem", "抹茶", "Чайник",
                 "Socks (pair)", "USB-C cable 2m", "Gift card €50", "🎁 Surprise box"]
CATEGORIES = ["Kitchen", "Games", "Drinks", "Apparel", "Électronique", "本", "Gifts"]
BRANDS = ["Acme", "Hasbro", "Nespresso", "Muji", "Ikea"]
TRACK_NAMES = ["Product Added", "Video Played", "Product Viewed", "Signed Up", "Checkout Started",
               "Email Opened", "Product Removed", "Product Clicked", "Video Paused", "Song Played",
               "Application Opened", "Subscription Renewed", "Coupon Applied", "Promotion Viewed",
               "Pedido Realizado", "注文完了", "Заказ оформлен", "🎉 Party Joined", "Café Ordered",
               "Login", "button_clicked", "order-refunded", "Order Refunded", "Checkout Step Completed"]
# Track names that look like the commerce events but are not equal to them (FQL "=" is exact).
NEAR_MISS_NAMES = ["order completed", "Order completed", "Order Completed ", " Cart Updated",
                   "cart updated", "Cart Updated!", "Order_Completed", "CART UPDATED"]


# --------------------------------------------------------------------------- dates

def _ymd(g, y0=2015, y1=2025):
    return g.int(y0, y1), g.int(1, 12), g.int(1, 28)


def _hms(g):
    return g.int(0, 23), g.int(0, 59), g.int(0, 59)


def date_good(g):
    """Strings the regex accepts and Date parses (converted to 'YYYY-MM-DD HH:mm:ss +00:00')."""
    y, mo, d = _ymd(g)
    h, mi, s = _hms(g)
    base = f"{y:04d}-{mo:02d}-{d:02d}"
    t = f"{h:02d}:{mi:02d}:{s:02d}"
    return g.pick([
        f"{base}T{t}Z",
        f"{base}T{t}.{g.int(0, 999):03d}Z",
        f"{base}T{t}.{g.int(0, 999999):06d}Z",
        f"{base}T{t}.{g.int(0, 9)}Z",
        f"{base}T{t}+02:00",
        f"{base}T{t}-05:30",
        f"{base}T{t}.{g.int(0, 999):03d}+09:00",
        f"{base}T{t}-0530",
        f"{base}T{t}+0100",
        f"{base}T{h:02d}:{mi:02d}Z",
        f"{base} {t}Z",
        f"{base} {t}+01:00",
    ])


def date_edge(g):
    """Valid-looking forms whose outcome depends on details (time zone, V8 parsing)."""
    y, mo, d = _ymd(g)
    h, mi, s = _hms(g)
    base = f"{y:04d}-{mo:02d}-{d:02d}"
    t = f"{h:02d}:{mi:02d}:{s:02d}"
    return g.pick([
        base,                                  # date-only: kept as is
        f"{base}T{t}",                         # offset-less: local time (UTC in oracle)
        f"{base} {t}",                         # space separator, offset-less
        f"{base} {h:02d}:{mi:02d}",            # no seconds
        f"{base}T{t}.{g.int(0, 999):03d}",     # fraction, no offset
        f"{base}T{t}+05",                      # hour-only offset
        f"{base}T{h:02d}{mi:02d}{s:02d}Z",     # compact time
        "2024-02-29T12:00:00Z",                # leap day
        "1969-12-31T23:59:59Z",                # pre-epoch
        "1970-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2023-05-17T24:00:00Z",                # hour 24
        f"{base}T{t}.123456789Z",              # nanoseconds
        "2000-01-01T00:00:00.000Z",
    ])


def date_bad(g):
    """Strings that look like dates but are not valid ones, or that the regex does not accept."""
    return g.pick([
        "2023-13-01",                          # month 13: regex rejects -> unchanged
        "2023-13-01T00:00:00Z",
        "2023-02-30",                          # date-only, impossible day -> unchanged
        "2023-02-30T00:00:00Z",                # V8 overflow -> 2023-03-02
        "2023-02-29T10:00:00Z",                # non-leap year
        "2023-04-31T08:00:00Z",
        "2023-05-32T00:00:00Z",
        "2023-05-17T2249",                     # regex ok, Date invalid -> null
        "2023-05-17T22:49:53,5Z",              # comma fraction -> null
        "2023-05-17T25:00:00Z",                # hour 25
        "2023-05-17T23:59:60Z",                # leap second
        "2023-05-17T22:61:00Z",
        "2023-5-7",
        "2023/05/17",
        "17.05.2023",
        "20230517T224953Z",
        "2023-05-17T22",
        "2023-05-17t22:49:53z",                # lower-case separators
        " 2023-05-17T22:49:53Z",               # leading space
        "2023-05-17T22:49:53Z ",               # trailing space
        "2023-05-17T22:49:53+2:00",
        "2023-05-17T22:49:53.Z",
        "2023-05-17T22:49:53Z[UTC]",
        "+002023-05-17T00:00:00Z",             # extended year
        "0000-00-00",
        "0000-01-01T00:00:00Z",
        "May 17, 2023",
        "Wed, 17 May 2023 22:49:53 GMT",
        "1684363793",                          # epoch seconds as string
        "1684363793000",
    ])


def some_date(g, mode):
    if mode == "bad":
        return date_bad(g)
    if mode == "edge":
        return g.weighted([(3, date_edge), (1, date_good), (1, date_bad)])
    return g.weighted([(6, date_good), (2, date_edge)])


# --------------------------------------------------------------------------- scalar fields

def email_value(g, mode):
    f, l = g.pick(ASCII_FIRST), g.pick(ASCII_LAST)
    dom = g.pick(DOMAINS)
    ok = f"{f}.{l}{g.int(1, 999)}@{dom}"
    if mode == "normal":
        return ok
    if mode == "edge":
        return g.pick([
            ok.upper(),
            f"{f.capitalize()}.{l.capitalize()}@{dom.upper()}",
            f"{f}+promo{g.int(1, 99)}@{dom}",
            [ok],                               # one-element array -> scalar
            f"{f}_{l}@sub.{dom}",
            f"zoë.{l}@{dom}",                   # non-ASCII local part
            f"{f}@localhost",
            f"{f}@{dom}.",
            f"{f}@xn--mnchen-3ya.de",
            f"o'brien{g.int(1, 9)}@{dom}",
            f"{f}@[127.0.0.1]",
        ])
    return g.pick([
        "not-an-email", "", None, 12345, 0, True, [ok, ok.upper()], {},
        f"{f}@", f"@{dom}", f"{f}@@{dom}", f" {ok} ", f"{f} {l}@{dom}",
        f"{f}@{dom},{l}@{dom}", "null", "undefined", [], ["not-an-email"],
    ])


def user_id_value(g, mode):
    if mode == "normal":
        return g.pick([lambda g: f"u-{g.int(1, 999999)}", lambda g: g.uuid(),
                       lambda g: f"user_{g.hex(8)}", lambda g: f"{g.int(100000, 9999999)}"])
    if mode == "edge":
        return g.pick([
            lambda g: g.int(1, 10 ** 9),        # number -> "123"
            0,                                  # number zero -> "0" (truthy string)
            lambda g: f"用户-{g.int(1, 999)}",
            lambda g: f" u-{g.int(1, 999)} ",
            lambda g: "u-" + "x" * 200,
            lambda g: [f"u-{g.int(1, 999)}"],   # one-element array
            lambda g: 1.5,
            lambda g: 12345678901234567890,     # > 2^64
            "0",
            "null",
        ])
    return g.pick([None, "", MISSING, MISSING, True, False, {"id": 1},
                   lambda g: [f"u-{g.int(1, 9)}", f"u-{g.int(10, 99)}"], [], " "])


def phone_value(g, mode):
    if mode == "normal":
        return g.pick([lambda g: f"+1415555{g.int(1000, 9999)}", lambda g: f"+44 20 7946 {g.int(1000, 9999)}",
                       lambda g: f"(415) 555-{g.int(1000, 9999)}"])
    if mode == "edge":
        return g.pick([lambda g: g.int(2000000000, 9999999999), lambda g: [f"+1415555{g.int(1000, 9999)}"],
                       "+49 (0)30 1234567", "０３-１２３４-５６７８", lambda g: 14155550000 + g.int(0, 9999)])
    return g.pick([None, "", "not a phone", 0, True, {"number": "+1"}, ["+1", "+2"], 1.5e10, MISSING])


def timestamp_value(g, mode):
    """The event's timestamp, i.e. the createdAt of trackEvent / trackPurchase."""
    y, mo, d = _ymd(g, 2019, 2025)
    h, mi, s = _hms(g)
    ms = g.int(0, 999)
    base = f"{y:04d}-{mo:02d}-{d:02d}"
    t = f"{h:02d}:{mi:02d}:{s:02d}"
    iso = f"{base}T{t}.{ms:03d}Z"
    epoch_ms = g.int(1546300800000, 1767225599000)
    if mode == "normal":
        return g.pick([iso, iso, f"{base}T{t}Z"])
    if mode == "edge":
        return g.pick([
            f"{base}T{t}+02:00", f"{base}T{t}.{ms:03d}-05:30", f"{base}T{t}-0800",
            base,                              # date-only: local midnight
            f"{base}T{t}",                     # offset-less
            f"{base} {t}",
            epoch_ms,                          # number = milliseconds
            epoch_ms // 1000,                  # number of seconds (read as ms!)
            str(epoch_ms),                     # numeric string
            str(epoch_ms // 1000),
            f"{base}T{t}.{ms:03d}123Z",
            "2024-02-29T23:59:59.999Z",
            "1970-01-01T00:00:00Z",
            0,
            "Wed, 17 May 2023 22:49:53 GMT",
            "2023-05-17T22:49:53.5Z",
        ])
    return g.pick([
        "garbage", "not a date", "", None, MISSING, "2024-13-45T00:00:00Z", "2023-02-30T00:00:00Z",
        "2023-05-17T2249", "2023-05-17T22:49:53,5Z", True, {}, [iso], [iso, iso], -1, "yesterday",
        "03/05/2024", "2023-05-17T25:00:00Z", "0", "12.5", 1.5e15, "Infinity", "NaN",
    ])


def int_id_value(g, mode):
    """campaignId / templateId."""
    n = g.int(1000, 999999)
    if mode == "normal":
        return g.pick([n, n, str(n)])
    if mode == "edge":
        return g.pick([str(n), float(n), f"{n}.0", [n], [str(n)], 0, -n, 2 ** 53, " 42 ", "0042", True, "1e3"])
    return g.pick([12.7, "abc", "", None, [n, n + 1], {}, "12.7", "1,234", 2 ** 63, [], "NaN", False])


def money_value(g, mode):
    v = round(g.r.uniform(0.5, 500), 2)
    if mode == "normal":
        return g.pick([v, v, g.int(1, 300)])
    if mode == "edge":
        return g.pick([f"{v:.2f}", str(g.int(1, 300)), 0, -v, [v], 1e21, 9007199254740993, "  12.5 ", "1e2"])
    return g.pick(["abc", "", None, MISSING, True, {}, [v, v], "12,50", "$12.50", "NaN"])


# --------------------------------------------------------------------------- nested data

def nasty_extra(g):
    """Keys/values that stress JSON handling inside dataFields."""
    return g.pick([
        {"big": 9007199254740993},
        {"huge": 1e300},
        {"tiny": 5e-324},
        {"negZero": -0.0},
        {"floaty": 0.1 + 0.2},
        {"exp": 1e21},
        {"emptyObj": {}, "emptyArr": []},
        {"nullVal": None, "emptyStr": ""},
        {"": "empty key"},
        {"a.b": "dotted key"},
        {"$ref": "#/x"},
        {"emoji": "👩‍👩‍👧‍👦 🇯🇵"},
        {"rtl": "مرحبا بالعالم"},
        {"control": "tab\tnewline\nquote\"backslash\\"},
        {"deep": {"a": {"b": {"c": {"d": {"e": {"when": "2023-05-17T22:49:53Z"}}}}}}},
        {"mixedArr": [1, "two", None, {"three": 3}, [4], True, "2023-05-17T22:49:53Z"]},
        {"bools": [True, False], "strBool": "true"},
        {"phoneNumber": "+10000000000"},
        {"constructor": "ctor", "toString": "str"},
        {"__proto__": {"polluted": True}},
    ])


def date_bag(g, mode, n):
    """Some date-ish values placed at several nesting levels."""
    out = {}
    keys = ["signupDate", "lastSeen", "renewalAt", "trialEnds", "birthday", "updated_at", "when"]
    for _ in range(n):
        where = g.weighted([(5, "top"), (2, "nested"), (2, "array"), (1, "arrObj")])
        k = g.pick(keys)
        v = some_date(g, mode)
        if where == "top":
            out[k] = v
        elif where == "nested":
            out.setdefault("profile", {})[k] = v
        elif where == "array":
            out.setdefault("dates", []).append(v)
        else:
            out.setdefault("events", []).append({"at": v, "n": g.int(1, 9)})
    return out


def traits_value(g, mode, email, phone, dates_mode):
    """identify traits (updateUser dataFields) / context.traits (commerce user.dataFields)."""
    t = {}
    put(t, "email", email)
    if g.chance(0.8):
        t["firstName"] = g.pick(FIRST)
        t["lastName"] = g.pick(LAST)
    if g.chance(0.3):
        t["name"] = f"{g.pick(FIRST)} {g.pick(LAST)}"
    put(t, "phone", phone)
    if g.chance(0.5):
        t["plan"] = g.pick(PLANS)
    if g.chance(0.4):
        t["age"] = g.pick([g.int(18, 90), str(g.int(18, 90)), 33.5])
    if g.chance(0.4):
        t["createdAt"] = some_date(g, dates_mode)
    if g.chance(0.3):
        t["address"] = {"city": g.pick(CITIES), "country": g.pick(COUNTRIES),
                        "postalCode": g.pick([str(g.int(10000, 99999)), g.int(10000, 99999)])}
    if g.chance(0.25):
        t["company"] = {"name": g.pick(["Acme Inc.", "Société Générale", "株式会社テスト"]),
                        "employees": g.int(1, 100000), "founded": some_date(g, dates_mode)}
    if g.chance(0.25):
        t["tags"] = g.pick([["vip"], ["vip", "beta"], [], ["ñ", "ü", "ß"]])
    if g.chance(0.15):
        t["optedOut"] = g.pick([True, False, "false", None])
    t.update(date_bag(g, dates_mode, g.int(0, 3)))
    if mode == "edge" and g.chance(0.6):
        t.update(nasty_extra(g))
    if mode == "bad":
        # the whole object is odd
        return g.pick([None, MISSING, {}, lambda g: {"email": email} if email is not MISSING else {},
                       "a string", [t], lambda g: dict(t, **nasty_extra(g))])
    return t


def product_value(g, mode):
    pid = g.pick([lambda g: f"p-{g.int(1, 9999)}", lambda g: g.hex(24)])
    p = {"product_id": pid, "sku": f"SKU-{g.int(100, 999)}", "name": g.pick(PRODUCT_NAMES),
         "price": g.pick([round(g.r.uniform(1, 200), 2), g.int(1, 100)]), "quantity": g.int(1, 5)}
    if g.chance(0.6):
        p["category"] = g.pick(CATEGORIES)
    if g.chance(0.4):
        p["url"] = f"https://shop.example.com/p/{pid}"
    if g.chance(0.3):
        p["image_url"] = f"https://cdn.example.com/{pid}.jpg"
    if g.chance(0.35):
        p["brand"] = g.pick(BRANDS)
    if g.chance(0.2):
        p["variant"] = g.pick(["red", "blue", "XL", "große"])
    if g.chance(0.2):
        p["position"] = g.int(1, 10)
    if g.chance(0.2):
        p["coupon"] = "SPRING"
    if mode == "normal":
        return p
    if mode == "edge":
        kind = g.pick(["pid_num", "price_str", "qty_str", "cat_one", "desc", "desc_date", "extra",
                       "price_zero", "qty_zero", "neg_price", "sku_num", "cat_empty", "id_too",
                       "unicode", "url_date", "qty_float_int", "price_int_str"])
        if kind == "pid_num":
            p["product_id"] = g.int(1, 99999)
        elif kind == "price_str":
            p["price"] = "12.50"
        elif kind == "qty_str":
            p["quantity"] = "2"
        elif kind == "cat_one":
            p["category"] = [g.pick(CATEGORIES)]
        elif kind == "desc":
            p["description"] = g.pick(["Blue ceramic mug", "Très bon thé", "説明"])
        elif kind == "desc_date":
            p["description"] = date_good(g)
        elif kind == "extra":
            p["dataFields"] = {"ignored": True}
            p["categories"] = ["ignored"]
        elif kind == "price_zero":
            p["price"] = 0
        elif kind == "qty_zero":
            p["quantity"] = 0
        elif kind == "neg_price":
            p["price"] = -5.25
        elif kind == "sku_num":
            p["sku"] = g.int(1000, 9999)
        elif kind == "cat_empty":
            p["category"] = ""
        elif kind == "id_too":
            p["id"] = "segment-id-ignored"
        elif kind == "unicode":
            p["name"] = "Ĉu vi ŝatas 🍵?"
            p["category"] = "茶"
        elif kind == "url_date":
            p["url"] = "2023-05-17T22:49:53Z"
        elif kind == "qty_float_int":
            p["quantity"] = 2.0
        elif kind == "price_int_str":
            p["price"] = "7"
        return p
    kind = g.pick(["no_pid", "no_name", "qty_float", "qty_word", "price_word", "cat_two", "no_price",
                   "no_qty", "pid_null", "name_null", "pid_empty", "name_obj", "price_null", "qty_neg_float",
                   "cat_obj", "only_id"])
    if kind == "no_pid":
        del p["product_id"]
    elif kind == "no_name":
        del p["name"]
    elif kind == "qty_float":
        p["quantity"] = 1.5
    elif kind == "qty_word":
        p["quantity"] = "two"
    elif kind == "price_word":
        p["price"] = "abc"
    elif kind == "cat_two":
        p["category"] = ["Kitchen", "Gifts"]
    elif kind == "no_price":
        del p["price"]
    elif kind == "no_qty":
        del p["quantity"]
    elif kind == "pid_null":
        p["product_id"] = None
    elif kind == "name_null":
        p["name"] = None
    elif kind == "pid_empty":
        p["product_id"] = ""
    elif kind == "name_obj":
        p["name"] = {"en": "Mug"}
    elif kind == "price_null":
        p["price"] = None
    elif kind == "qty_neg_float":
        p["quantity"] = -0.5
    elif kind == "cat_obj":
        p["category"] = {"main": "Kitchen"}
    elif kind == "only_id":
        p = {"id": pid, "name": p["name"], "price": p["price"], "quantity": p["quantity"]}
    return p


def products_value(g, mode):
    n = g.weighted([(1, 0), (5, 1), (4, 2), (2, 3), (1, 4)])
    if mode == "bad":
        shape = g.weighted([(12, "item"), (1, "not_list"), (1, "null"), (1, "missing"), (1, "null_elem"),
                            (1, "str_elem")])
        if shape == "item":
            items = [product_value(g, "normal") for _ in range(max(n, 1))]
            items[g.int(0, len(items) - 1)] = product_value(g, "bad")
            return items
        if shape == "not_list":
            return g.pick([lambda g: product_value(g, "normal"), "p-1", 3])
        if shape == "null":
            return None
        if shape == "missing":
            return MISSING
        if shape == "null_elem":
            return [product_value(g, "normal"), None]
        return ["p-1", "p-2"]
    items = []
    for _ in range(n):
        items.append(product_value(g, "edge" if (mode == "edge" and g.chance(0.6)) else "normal"))
    return items


# --------------------------------------------------------------------------- event envelope

def context_value(g, with_traits=None):
    c = {}
    if g.chance(0.7):
        name, ver = g.pick(LIBS)
        c["library"] = {"name": name, "version": ver}
    if g.chance(0.5):
        c["ip"] = g.pick([f"{g.int(1, 223)}.{g.int(0, 255)}.{g.int(0, 255)}.{g.int(1, 254)}",
                          "2001:db8::" + g.hex(4)])
    if g.chance(0.3):
        c["locale"] = g.pick(["en-US", "de-DE", "pt-BR", "ja-JP"])
    if g.chance(0.2):
        c["userAgent"] = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15"
    if g.chance(0.15):
        c["page"] = {"path": "/cart", "url": "https://shop.example.com/cart", "title": "Cart"}
    if g.chance(0.1):
        c["timezone"] = g.pick(["Europe/Berlin", "America/Los_Angeles", "Asia/Tokyo"])
    if with_traits is not None and with_traits is not MISSING:
        c["traits"] = with_traits
    return c


def envelope(g, typ, user_id, ts):
    e = {"type": typ, "messageId": g.pick([lambda g: g.uuid(), lambda g: f"ajs-next-{g.hex(32)}",
                                           lambda g: f"m-{g.int(1, 10 ** 6)}"])}
    put(e, "timestamp", ts)
    put(e, "userId", user_id)
    if user_id in (MISSING, None, "") or g.chance(0.4):
        e["anonymousId"] = g.uuid()
    if g.chance(0.3):
        e["sentAt"] = "2024-05-01T10:00:00.100Z"
        e["receivedAt"] = "2024-05-01T10:00:00.200Z"
    if g.chance(0.2):
        e["integrations"] = g.pick([{"All": True}, {"Iterable": True}, {"All": False, "Iterable (Actions)": True},
                                    {"Iterable": {"extra": 1}}])
    if g.chance(0.2):
        e["channel"] = g.pick(["server", "client", "mobile"])
    return e


def modes_for(g, fields, weights=None):
    """Per field: 'normal', 'edge' or 'bad'. About P_BAD of the events get 1-2 bad fields,
    chosen with the given per-field weights (default 1)."""
    weights = weights or {}
    modes = {f: ("edge" if g.chance(P_EDGE) else "normal") for f in fields}
    bad = g.chance(P_BAD)
    if bad:
        pool = list(fields)
        for _ in range(2 if g.chance(0.2) else 1):
            f = g.weighted([(weights.get(x, 1), x) for x in pool])
            pool.remove(f)
            modes[f] = "bad"
    return modes, bad


def message_id_value(g, mode):
    if mode == "bad":
        return g.pick([None, "", MISSING, 12345, {"id": 1}, ["m-1", "m-2"]])
    if mode == "edge":
        return g.pick([lambda g: g.int(1, 10 ** 6), ["m-one"], "ümlaut-ïd", "m" * 300])
    return None  # keep the envelope's


# --------------------------------------------------------------------------- event kinds

def gen_identify(g):
    modes, bad = modes_for(g, ["email", "userId", "phone", "traits", "dates", "messageId"])
    email = email_value(g, modes["email"]) if g.chance(0.9) or modes["email"] == "bad" else MISSING
    phone = phone_value(g, modes["phone"]) if g.chance(0.5) or modes["phone"] == "bad" else MISSING
    uid = user_id_value(g, modes["userId"])
    # realistic identify without email comes with a userId; without userId with an email
    ts = timestamp_value(g, "normal")
    e = envelope(g, "identify", uid, ts)
    mid = message_id_value(g, modes["messageId"])
    if mid is MISSING:
        del e["messageId"]
    elif mid is not None:
        e["messageId"] = mid
    traits = traits_value(g, modes["traits"], email, phone, modes["dates"])
    put(e, "traits", traits)
    ctx = context_value(g, with_traits=({"email": email} if g.chance(0.1) and email is not MISSING else None))
    if ctx:
        e["context"] = ctx
    return e, bad


def track_properties(g, modes, name):
    p = {}
    if name in ("Product Added", "Product Viewed", "Product Removed", "Product Clicked"):
        prod = product_value(g, "normal")
        prod.pop("quantity", None) if name == "Product Viewed" else None
        p.update(prod)
    elif name.startswith("Video") or name == "Song Played":
        p.update({"title": g.pick(["Intro", "Épisode 1", "第1話"]), "position": g.int(0, 3600),
                  "total_length": g.int(60, 7200), "livestream": g.pick([True, False])})
    elif name == "Signed Up":
        p.update({"type": g.pick(["organic", "referral"]), "plan": g.pick(PLANS)})
    else:
        if g.chance(0.5):
            p["value"] = g.pick([g.int(1, 100), round(g.r.uniform(0, 100), 2), "42"])
        if g.chance(0.4):
            p["label"] = g.pick(["hero", "footer", "ünïcödé", ""])
    if g.chance(0.35) or modes["campaignId"] != "normal":
        put(p, "campaignId", int_id_value(g, modes["campaignId"]))
    if g.chance(0.25) or modes["templateId"] != "normal":
        put(p, "templateId", int_id_value(g, modes["templateId"]))
    p.update(date_bag(g, modes["dates"], g.int(0, 3)))
    if modes["properties"] == "edge" and g.chance(0.6):
        p.update(nasty_extra(g))
    if g.chance(0.2):
        p["items"] = [{"sku": "a", "qty": 1}, {"sku": "b", "nested": {"when": some_date(g, modes["dates"])}}]
    return p


def place_emails(g, e, props, mode):
    """trackEvent/commerce email: properties.email, else context.traits.email."""
    where = g.weighted([(4, "props"), (3, "ctx"), (1, "both"), (1, "none"), (1, "propsnull")])
    ctx_traits = None
    if where in ("props", "both"):
        if isinstance(props, dict):
            put(props, "email", email_value(g, mode))
    if where in ("ctx", "both", "propsnull"):
        ctx_traits = {}
        put(ctx_traits, "email", email_value(g, mode))
    if where == "propsnull" and isinstance(props, dict):
        props["email"] = g.pick([None, ""])     # null falls back to context; "" does not
    return ctx_traits


def gen_track(g, name=None):
    modes, bad = modes_for(g, ["email", "userId", "event", "timestamp", "campaignId", "templateId",
                               "properties", "dates", "messageId"])
    if name is None:
        if modes["event"] == "bad":
            name = g.pick([MISSING, "", None, 123, True, ["Video Played"], {"name": "x"}, "x" * 300,
                           "Product Added\n", "\u00a0"])
        elif modes["event"] == "edge":
            name = g.pick(NEAR_MISS_NAMES + ["Ünïcödé Évent 🚀", "событие", "イベント発生", "a", "Page Viewed"])
        else:
            name = g.pick(TRACK_NAMES)
    uid = user_id_value(g, modes["userId"])
    e = envelope(g, "track", uid, timestamp_value(g, modes["timestamp"]))
    mid = message_id_value(g, modes["messageId"])
    if mid is MISSING:
        del e["messageId"]
    elif mid is not None:
        e["messageId"] = mid
    put(e, "event", name)
    props = track_properties(g, modes, name if isinstance(name, str) else "")
    if modes["properties"] == "bad":
        props = g.pick([None, MISSING, {}, "a string", [1, 2], lambda g: {"nested": {"deep": [{}, []]}}])
    ctx_traits = place_emails(g, e, props, modes["email"])
    put(e, "properties", props)
    ctx = context_value(g, with_traits=ctx_traits)
    if ctx:
        e["context"] = ctx
    return e, bad


def commerce_user_traits(g, modes):
    """context.traits for commerce events: user.dataFields and user.phoneNumber."""
    phone = phone_value(g, modes["phone"]) if g.chance(0.5) or modes["phone"] == "bad" else MISSING
    t = traits_value(g, modes["traits"], MISSING, phone, modes["dates"])
    return t


def gen_cart(g):
    modes, bad = modes_for(g, ["email", "userId", "phone", "traits", "dates", "products", "properties"],
                           {"products": 5, "email": 2})
    uid = user_id_value(g, modes["userId"])
    e = envelope(g, "track", uid, timestamp_value(g, "normal" if g.chance(0.8) else "edge"))
    e["event"] = "Cart Updated"
    props = {"cart_id": f"c-{g.hex(8)}"}
    put(props, "products", products_value(g, modes["products"]))
    if g.chance(0.3):
        props["currency"] = g.pick(["USD", "EUR", "JPY"])
    props.update(date_bag(g, modes["dates"], g.int(0, 2)))
    if modes["properties"] == "bad":
        props = g.pick([None, MISSING, {}, "cart"])
    elif modes["properties"] == "edge" and g.chance(0.5):
        props.update(nasty_extra(g))
    email_traits = place_emails(g, e, props, modes["email"])
    put(e, "properties", props)
    traits = commerce_user_traits(g, modes)
    if isinstance(traits, dict) and isinstance(email_traits, dict):
        traits.update(email_traits)
    elif traits is MISSING or traits is None:
        traits = email_traits if email_traits is not None else traits
    ctx = context_value(g, with_traits=traits if traits is not None else None)
    if traits is None and g.chance(0.5):
        ctx["traits"] = None
    if ctx:
        e["context"] = ctx
    return e, bad


def gen_order(g):
    modes, bad = modes_for(g, ["email", "userId", "phone", "traits", "dates", "products", "total",
                               "order_id", "timestamp", "campaignId", "templateId", "properties"],
                           {"products": 5, "total": 2, "email": 2})
    uid = user_id_value(g, modes["userId"])
    e = envelope(g, "track", uid, timestamp_value(g, modes["timestamp"]))
    e["event"] = "Order Completed"
    props = {}
    oid_mode = modes["order_id"]
    if oid_mode == "normal":
        props["order_id"] = g.pick([lambda g: f"o-{g.int(1, 99999)}", lambda g: g.hex(24)])
    elif oid_mode == "edge":
        props["order_id"] = g.pick([lambda g: g.int(1, 10 ** 7), "ORDER-ñ-1", ["o-1"], 0])
    else:
        put(props, "order_id", g.pick([None, "", MISSING, {"id": 1}, ["o-1", "o-2"], True]))
    put(props, "total", money_value(g, modes["total"]))
    if g.chance(0.6):
        props["revenue"] = round(g.r.uniform(1, 300), 2)
    if g.chance(0.3):
        props["shipping"] = g.pick([0, 4.99, "4.99"])
    if g.chance(0.3):
        props["tax"] = round(g.r.uniform(0, 20), 2)
    if g.chance(0.3):
        props["discount"] = g.pick([0, 5, 2.5])
    if g.chance(0.3):
        props["coupon"] = g.pick(["SPRING", "ÉTÉ2024", ""])
    if g.chance(0.5):
        props["currency"] = g.pick(["USD", "EUR", "JPY"])
    if g.chance(0.3) or modes["campaignId"] != "normal":
        put(props, "campaignId", int_id_value(g, modes["campaignId"]))
    if g.chance(0.2) or modes["templateId"] != "normal":
        put(props, "templateId", int_id_value(g, modes["templateId"]))
    put(props, "products", products_value(g, modes["products"]))
    props.update(date_bag(g, modes["dates"], g.int(0, 3)))
    if modes["properties"] == "bad":
        props = g.pick([None, MISSING, {"products": []}, {"total": 10}])
    elif modes["properties"] == "edge" and g.chance(0.5):
        props.update(nasty_extra(g))
    email_traits = place_emails(g, e, props, modes["email"])
    put(e, "properties", props)
    traits = commerce_user_traits(g, modes)
    if isinstance(traits, dict) and isinstance(email_traits, dict):
        traits.update(email_traits)
    elif traits is MISSING or traits is None:
        traits = email_traits if email_traits is not None else traits
    ctx = context_value(g, with_traits=traits if traits is not None else None)
    if ctx:
        e["context"] = ctx
    return e, bad


# --------------------------------------------------------------------------- driver

KINDS = [
    # weight, kind label, action, generator
    (36, "identify", "updateUser", gen_identify),
    (36, "track", "trackEvent", gen_track),
    (13, "cart", "updateCart", gen_cart),
    (15, "order", "trackPurchase", gen_order),
]

# Names from which an event must never be routed to trackEvent (preset trigger).
COMMERCE = {"Cart Updated": "updateCart", "Order Completed": "trackPurchase"}


def blank_mutation(g, ev):
    """Batch only: blank one field. Batches run removeEmptyValues without the root rule, so top-level
    "" survives there (unlike single events); these mutations make sure that path is exercised."""
    is_identify = ev.get("type") == "identify"
    data_key = "traits" if is_identify else "properties"
    data = ev.get(data_key)
    what = g.pick(["userId", "email", "phone", "messageId", "no_ids"] if is_identify else
                  ["userId", "email", "messageId", "timestamp", "event", "campaignId", "no_ids"])
    if what in ("userId", "messageId", "timestamp", "event"):
        ev[what] = g.pick(["", "", None])
    elif what == "email" and isinstance(data, dict):
        data["email"] = g.pick(["", "", None])
    elif what == "phone" and isinstance(data, dict):
        data["phone"] = g.pick(["", "", None])
    elif what == "campaignId" and isinstance(data, dict):
        data["campaignId"] = g.pick(["", None])
    elif what == "no_ids":
        ev.pop("userId", None)
        ev.setdefault("anonymousId", g.uuid())
        if isinstance(data, dict):
            data.pop("email", None)
        if isinstance(ev.get("context"), dict) and isinstance(ev["context"].get("traits"), dict):
            ev["context"]["traits"].pop("email", None)
    return ev


def settings_value(g):
    s = {"apiKey": "k"}
    loc = g.weighted([(45, "united_states"), (35, "europe"), (20, MISSING)])
    put(s, "dataCenterLocation", loc)
    return s


def action_for(event):
    """The automatic preset that picks this event (see reference §3)."""
    if event.get("type") == "identify":
        return "updateUser"
    name = event.get("event")
    return COMMERCE.get(name, "trackEvent") if isinstance(name, str) else "trackEvent"


def generate(seed=SEED, n_single=N_SINGLE, n_batch=N_BATCH):
    g = G(seed)
    total = n_single + n_batch
    # spread batch lines evenly through the file
    batch_slots = set(round((i + 0.5) * total / n_batch) for i in range(n_batch))
    lines = []
    for idx in range(1, total + 1):
        settings = settings_value(g)
        if idx in batch_slots:
            kind = g.pick(["identify", "track"])
            n = g.weighted([(6, lambda g: g.int(1, 5)), (3, lambda g: g.int(6, 12)), (1, lambda g: g.int(13, 20))])
            events = []
            for _ in range(n):
                if kind == "identify":
                    ev, _bad = gen_identify(g)
                else:
                    ev, _bad = gen_track(g)
                    while action_for(ev) != "trackEvent":     # keep the batch homogeneous
                        ev, _bad = gen_track(g)
                if g.chance(0.15):
                    ev = blank_mutation(g, ev)
                events.append(ev)
            action = "updateUser" if kind == "identify" else "trackEvent"
            lines.append({"name": f"gen-{idx:04d}-batch-{kind}", "action": action,
                          "settings": settings, "events": events})
            continue
        kind = g.weighted([(w, k) for w, k, _a, _f in KINDS])
        fn = {k: f for _w, k, _a, f in KINDS}[kind]
        ev, _bad = fn(g)
        action = action_for(ev)
        assert kind != "identify" or action == "updateUser"
        lines.append({"name": f"gen-{idx:04d}-{kind}", "action": action, "settings": settings, "event": ev})
    return lines


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "..", "tests", "data", "differential", "cases.jsonl")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=default_out, help="output file (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=SEED)
    args = ap.parse_args()
    lines = generate(args.seed)
    out = os.path.normpath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="\n") as fh:
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n")
    print(f"wrote {len(lines)} cases to {out}")


if __name__ == "__main__":
    main()
