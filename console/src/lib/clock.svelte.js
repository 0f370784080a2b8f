// One shared one-second tick for countdowns and relative times, instead of a
// timer per card.

export const clock = $state({ now: Date.now() });

setInterval(() => {
  clock.now = Date.now();
}, 1000);
