/* The review page's behaviour: lazy videos, choosing takes, keyboard, picks.json.
   Inlined into the page by ledger/review.py; it loads nothing from anywhere. */
(function () {
  "use strict";
  var body = document.body;
  var serve = body.dataset.mode === "serve";
  var segments = Array.prototype.slice.call(document.querySelectorAll(".segment"));
  var statusLine = document.getElementById("status");
  var storeKey = "ledger-review-picks:" + body.dataset.page;

  function say(text, bad) {
    statusLine.textContent = text;
    statusLine.className = bad ? "bad" : "";
  }

  /* A player becomes a video element only near the viewport: nothing is created or downloaded before
     it is looked at. Its markup waits as the text of a <noscript> (a real player without script). */
  function load(player) {
    var markup = player.querySelector("noscript");
    if (markup) {
      var html = markup.textContent;
      markup.remove();
      player.insertAdjacentHTML("beforeend", html);
    }
  }
  function watch() {
    var players = document.querySelectorAll(".player");
    if (!("IntersectionObserver" in window)) {
      Array.prototype.forEach.call(players, load);
      return;
    }
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting) {
          load(entry.target);
          observer.unobserve(entry.target);
        }
      });
    }, {rootMargin: "200px 0px"});
    Array.prototype.forEach.call(players, function (p) { observer.observe(p); });
  }
  /* A loading video holds back the page's load event: start them once the page itself is in. */
  if (document.readyState === "complete") { watch(); } else { window.addEventListener("load", watch); }

  function segKey(seg) { return seg.dataset.storyboard + "#" + seg.dataset.segment; }

  function countPicked() {
    var n = segments.filter(function (s) { return s.dataset.picked; }).length;
    document.getElementById("picked-count").textContent = String(n);
  }

  function unsaved() {
    return segments.filter(function (s) { return s.dataset.picked !== s.dataset.ledgerPicked; });
  }

  function showUnsaved() {
    var note = document.getElementById("unsaved");
    if (!note) { return; }
    var n = unsaved().length;
    note.textContent = n ? n + " choice(s) kept in this browser only: download picks.json, then run " +
      "`ledger pick --from-file picks.json`" : "";
  }

  /* Mark jobId (a string, "" for none) as the segment's pick. */
  function apply(seg, jobId) {
    seg.dataset.picked = jobId;
    Array.prototype.forEach.call(seg.querySelectorAll(".take"), function (take) {
      var mine = jobId !== "" && take.dataset.job === jobId;
      take.classList.toggle("picked", mine);
      var button = take.querySelector("button.choose");
      if (button) {
        button.setAttribute("aria-pressed", mine ? "true" : "false");
        button.firstChild.nodeValue = mine ? "chosen " : "choose ";
      }
    });
    countPicked();
    showUnsaved();
  }

  function remember() {
    var kept = {};
    unsaved().forEach(function (s) { kept[segKey(s)] = s.dataset.picked; });
    try { localStorage.setItem(storeKey, JSON.stringify(kept)); } catch (e) { /* private mode: keep in page */ }
  }

  function token() {
    var match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (match) {
      sessionStorage.setItem("ledger-review-token", decodeURIComponent(match[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem("ledger-review-token") || "";
  }
  var secret = serve ? token() : "";

  function post(path, payload) {
    return fetch(path, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-Ledger-Token": secret},
      body: JSON.stringify(payload)
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) { throw new Error(data.error || ("HTTP " + response.status)); }
        return data;
      });
    });
  }

  function choose(seg, take) {
    var jobId = take ? take.dataset.job : "";
    if (take && !take.querySelector("button.choose")) {
      say("v" + take.dataset.version + " has no video to choose", true);
      return;
    }
    if (jobId && seg.dataset.picked === jobId) { jobId = ""; }  /* choosing the chosen take clears it */
    var label = jobId ? take.dataset.ref : segKey(seg);
    if (!serve) {
      apply(seg, jobId);
      remember();
      say(jobId ? "chose " + label : "cleared " + label);
      return;
    }
    var request = jobId ? post("api/pick", {job: Number(jobId)}) :
      post("api/clear", {storyboard_id: Number(seg.dataset.storyboardId), segment: Number(seg.dataset.segment)});
    say("saving…");
    request.then(function () {
      seg.dataset.ledgerPicked = jobId;
      apply(seg, jobId);
      say((jobId ? "chose " : "cleared ") + label + " (saved in the ledger)");
    }).catch(function (error) {
      say("not saved: " + error.message, true);
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.choose");
    var seg = event.target.closest(".segment");
    if (seg && document.activeElement !== seg && !event.target.closest("video")) { seg.focus({preventScroll: true}); }
    if (button) { choose(seg, button.closest(".take")); }
  });

  function current() {
    var seg = document.activeElement && document.activeElement.closest ? document.activeElement.closest(".segment") : null;
    return seg;
  }

  function move(step) {
    var seg = current();
    var index = seg ? segments.indexOf(seg) + step : 0;
    var next = segments[Math.max(0, Math.min(segments.length - 1, index))];
    if (next) {
      next.focus({preventScroll: true});
      next.scrollIntoView({block: "center"});
    }
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.target.closest && event.target.closest("input, textarea, select")) { return; }
    if (event.key === "j" || event.key === "k") {
      move(event.key === "j" ? 1 : -1);
      event.preventDefault();
      return;
    }
    var seg = current();
    if (!seg || !/^[0-9]$/.test(event.key)) { return; }
    event.preventDefault();
    if (event.key === "0") {
      if (seg.dataset.picked) { choose(seg, null); }
      return;
    }
    var take = seg.querySelector('.take[data-key="' + event.key + '"]');
    if (!take) { say("segment " + seg.dataset.segment + " has no take " + event.key, true); return; }
    if (seg.dataset.picked !== take.dataset.job) { choose(seg, take); }
  });

  /* Static page: choices kept in this browser, and picks.json for `ledger pick --from-file`. */
  if (!serve) {
    var kept = {};
    try { kept = JSON.parse(localStorage.getItem(storeKey) || "{}"); } catch (e) { kept = {}; }
    segments.forEach(function (seg) {
      var key = segKey(seg);
      if (Object.prototype.hasOwnProperty.call(kept, key)) {
        var jobId = String(kept[key]);
        if (jobId === "" || seg.querySelector('.take[data-job="' + jobId + '"] button.choose')) { apply(seg, jobId); }
      }
    });
    showUnsaved();
    document.getElementById("download-picks").addEventListener("click", function () {
      var picks = [];
      var cleared = [];
      segments.forEach(function (seg) {
        var storyboard = seg.dataset.storyboard;
        var segment = Number(seg.dataset.segment);
        if (seg.dataset.picked) {
          var take = seg.querySelector('.take[data-job="' + seg.dataset.picked + '"]');
          picks.push({storyboard: storyboard, segment_index: segment, version: Number(take.dataset.version),
                      job_id: Number(take.dataset.job), ref: take.dataset.ref});
        } else if (seg.dataset.ledgerPicked) {
          cleared.push({storyboard: storyboard, segment_index: segment});
        }
      });
      var text = JSON.stringify({format: "ledger-picks/1", picks: picks, cleared: cleared}, null, 2) + "\n";
      var link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
      link.download = "picks.json";
      document.body.appendChild(link);
      link.click();
      setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
      say(picks.length + " pick(s) in picks.json");
    });
  }
  countPicked();
}());
