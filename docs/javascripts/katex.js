// Typeset the formulas that pymdownx.arithmatex marked, with the KaTeX copy served by the
// site itself (assets/katex): no network is needed to read the math.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "$", right: "$", display: false },
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
  fitDisplays(body);
  document.fonts.ready.then(() => fitDisplays(body)); // KaTeX's fonts change the widths
});

// A display formula wider than its column (a phone's 390 px) is set in a smaller font,
// just small enough to fit, instead of being cut or scrolled.
function fitDisplays(root) {
  for (const display of root.querySelectorAll(".katex-display")) {
    display.style.fontSize = "";
    let percent = 100;
    for (let tries = 0; tries < 4 && display.scrollWidth > display.clientWidth; tries++) {
      percent = Math.floor((percent * display.clientWidth) / display.scrollWidth) - 1;
      display.style.fontSize = `${percent}%`;
    }
  }
}
window.addEventListener("resize", () => fitDisplays(document.body));
