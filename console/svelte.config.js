// Svelte compiler options for the console: runes everywhere, so a stray
// legacy-mode component fails the build instead of behaving differently.
export default {
  compilerOptions: { runes: true },
};
