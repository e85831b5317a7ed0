// The period the charts show: the last 24 hours, 7 or 30 days (the chips), or any range picked
// with the from/to fields beside them. One instance for the page; charts ask it for their
// window and are told when it changes.

const $ = (id) => document.getElementById(id);
const pad = (n) => String(n).padStart(2, "0");

// <input type="datetime-local"> speaks local time without an offset.
export function toLocalInput(date) {
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}`
  );
}

export function fromLocalInput(value) {
  if (!value) return null;
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

export const chartRange = {
  days: 7,
  custom: null, // { from: Date, to: Date } when picked
  listeners: [],

  // { from, to } the charts should show now.
  window() {
    if (this.custom) return { from: this.custom.from, to: this.custom.to };
    const to = new Date();
    return { from: new Date(to.getTime() - this.days * 86400e3), to };
  },

  onChange(listener) {
    this.listeners.push(listener);
  },

  changed() {
    const error = $("range-error");
    if (error) error.hidden = true;
    this.show();
    for (const listener of this.listeners) listener(this.window());
  },

  useDays(days) {
    this.days = days;
    this.custom = null;
    this.changed();
  },

  // Returns an error message, or null when the range was taken.
  useRange(from, to) {
    if (!from || !to) return "Pick both a start and an end.";
    if (from >= to) return "The start must be before the end.";
    if (to.getTime() - from.getTime() > 800 * 86400e3) return "At most 800 days at a time.";
    this.custom = { from, to };
    this.changed();
    return null;
  },

  // Chips and fields show what is in use.
  show() {
    for (const chip of document.querySelectorAll(".range .chip[data-range]")) {
      chip.classList.toggle("active", !this.custom && Number(chip.dataset.range) === this.days);
    }
    const form = $("range-form");
    if (!form) return;
    const { from, to } = this.window();
    $("range-from").value = toLocalInput(from);
    $("range-to").value = toLocalInput(to);
    form.classList.toggle("active", Boolean(this.custom));
    form.dataset.custom = this.custom ? "true" : "false";
  },

  setup() {
    for (const chip of document.querySelectorAll(".range .chip[data-range]")) {
      chip.addEventListener("click", () => this.useDays(Number(chip.dataset.range)));
    }
    const form = $("range-form");
    if (form) {
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        const problem = this.useRange(
          fromLocalInput($("range-from").value),
          fromLocalInput($("range-to").value),
        );
        $("range-error").textContent = problem || "";
        $("range-error").hidden = !problem;
      });
    }
    this.show();
  },
};
