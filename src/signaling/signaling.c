/* PLACEHOLDER: being written (signaling codec). */
#include "signaling/signaling.h"
