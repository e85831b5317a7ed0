// Times as the whole product shows them: in the network's time zone, to the minute, with the
// zone's UTC offset ("2026-12-04 14:50 +01:00"), whatever the browser's own zone or locale.
// The zone comes from /network or /live (setZone); until then, UTC.

let zone = "UTC";
const formatters = new Map();

export function setZone(name) {
  if (!name || name === zone) return;
  try {
    new Intl.DateTimeFormat("en-GB", { timeZone: name });
    zone = name;
  } catch {
    console.warn("unknown time zone", name);
  }
}

export function getZone() {
  return zone;
}

function formatter() {
  let f = formatters.get(zone);
  if (!f) {
    f = new Intl.DateTimeFormat("en-GB", {
      timeZone: zone,
      year: "numeric",
      month: "2-digit",
      day: "2-digit",
      hour: "2-digit",
      minute: "2-digit",
      second: "2-digit",
      hourCycle: "h23",
      timeZoneName: "longOffset",
    });
    formatters.set(zone, f);
  }
  return f;
}

function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const d = value instanceof Date ? value : new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

// {date: "2026-12-04", time: "14:50", seconds: "12", offset: "+01:00"} in the network's zone.
export function localParts(value) {
  const d = toDate(value);
  if (!d) return null;
  const p = {};
  for (const { type, value: v } of formatter().formatToParts(d)) p[type] = v;
  const name = p.timeZoneName || "GMT";
  const offset = name === "GMT" || name === "UTC" ? "+00:00" : name.replace(/^(GMT|UTC)/, "");
  return {
    date: `${p.year}-${p.month}-${p.day}`,
    time: `${p.hour}:${p.minute}`,
    seconds: p.second,
    offset: offset.replace("−", "-"),
  };
}

// "2026-12-04 14:50 +01:00"
export function localText(value, { seconds = false } = {}) {
  const p = localParts(value);
  if (!p) return "–";
  return `${p.date} ${p.time}${seconds ? `:${p.seconds}` : ""} ${p.offset}`;
}

// "2026-12-04"
export function localDate(value) {
  const p = localParts(value);
  return p ? p.date : "–";
}

// A span: "2026-12-04 13:00–14:00 +01:00" when both ends share the day and the offset.
export function localSpan(from, to) {
  const a = localParts(from);
  const b = localParts(to);
  if (!a || !b) return "–";
  if (a.offset === b.offset && a.date === b.date) return `${a.date} ${a.time}–${b.time} ${a.offset}`;
  if (a.offset === b.offset && b.time === "00:00") {
    // a window ending at midnight: "2026-12-04 23:00–24:00 +01:00"
    const next = new Date(new Date(`${a.date}T00:00:00Z`).getTime() + 86400e3);
    if (next.toISOString().slice(0, 10) === b.date) return `${a.date} ${a.time}–24:00 ${a.offset}`;
  }
  return `${localText(from)} – ${localText(to)}`;
}

// An axis tick of a time chart, in the network's zone: "12-04" at midnight, else "12-04 06:00"
// (a chart library places its ticks in the browser's zone: the date keeps them unambiguous).
export function axisTime(value) {
  const p = localParts(value);
  if (!p) return "";
  return p.time === "00:00" ? p.date.slice(5) : `${p.date.slice(5)} ${p.time}`;
}

// A duration for people: "42 s", "7 min", "3 h 05 min", "2 d 4 h".
export function ageText(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, seconds);
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) {
    const h = Math.floor(s / 3600);
    return `${h} h ${String(Math.round((s - h * 3600) / 60)).padStart(2, "0")} min`;
  }
  const d = Math.floor(s / 86400);
  return `${d} d ${Math.round((s - d * 86400) / 3600)} h`;
}
