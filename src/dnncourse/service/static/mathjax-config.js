// MathJax 2 settings for the feedback pages, read by /mathjax/MathJax.js (loaded next).
// The math is typeset from the service's own copy of MathJax (jupyter-server-mathjax): the
// STIX-Web fonts it ships, "$...$" inline as in Jupyter, and the Safe extension (no links,
// no styles, no ids from the TeX: the Markdown is the student's).
"use strict";
window.MathJax = {
  tex2jax: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  "HTML-CSS": { availableFonts: [], imageFont: null, preferredFont: null, webFont: "STIX-Web" },
  messageStyle: "none",
  showMathMenu: false,
};
